"""Tier and route parsing, the per-request policy, and who the client is (trusted proxies)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from api.clientip import ClientIp
from core.ratelimit.policy import RatePolicy
from core.ratelimit.tiers import Tier, parse_tiers
from core.settings import Settings


def test_default_tiers_let_a_busy_client_through_and_protect_only_listed_routes() -> None:
    s = Settings()
    assert parse_tiers(s.rate_limits) == (Tier("short", 200, 1000), Tier("medium", 6000, 60_000))
    assert s.rate_limit_enabled and not s.rate_limit_fail_open and s.rate_limit_backend == "redis"
    p = RatePolicy.parse(s.rate_limits, s.rate_limit_routes)
    assert p.tiers_for("POST", "/errors/log") == p.defaults
    batch = p.tiers_for("POST", "/errors/batch")
    assert batch is not None and batch[0].limit == 20 and batch[0].key == "short@POST/errors/batch"
    assert p.tiers_for("POST", "/api/42/envelope/") == p.defaults
    assert p.tiers_for("GET", "/errors/" + "a" * 64) == p.defaults
    assert p.tiers_for("PUT", "/api/projects/3/quota") == p.defaults
    # not listed: never limited (404s, other methods, static files, docs)
    for method, path in [("GET", "/nope"), ("GET", "/errors/log/x"), ("POST", "/errors/log/x"),
                         ("GET", "/api/42/envelope/"), ("POST", "/api/4/2/envelope/"), ("GET", "/dashboard"),
                         ("GET", "/docs"), ("DELETE", "/errors")]:
        assert p.tiers_for(method, path) is None, (method, path)


def test_windows_and_units() -> None:
    windows = [t.window_ms for t in parse_tiers("a:1/500ms, b:2/10s,c:3/m,d:4/2h")]
    assert windows == [500, 10_000, 60_000, 7_200_000]


@pytest.mark.parametrize(("env", "value", "named"), [
    ("rate_limits", "short:ten/s", "limit 'ten'"),
    ("rate_limits", "short:0/s", "limit '0'"),
    ("rate_limits", "short:10", "missing '/window'"),
    ("rate_limits", "short:10/3d", "window '3d'"),
    ("rate_limits", "short:10/25h", "window '25h'"),
    ("rate_limits", "Short:10/s", "name 'Short'"),
    ("rate_limits", "short10/s", "tier 'short10/s'"),
    ("rate_limits", "a:1/s,a:2/m", "'a' appears twice"),
    ("rate_limits", " , ", "no tiers"),
    ("rate_limit_routes", "post /errors/batch=short:2/s", "method 'post'"),
    ("rate_limit_routes", "POST errors=short:2/s", "path 'errors'"),
    ("rate_limit_routes", "POST /errors/batch", "expected 'METHOD /path=tiers'"),
    ("rate_limit_routes", "POST /errors/batch=short:2/x", "window 'x'"),
    ("rate_limit_routes", "POST /errors/{a=on", "path '/errors/{a'"),
    ("trusted_proxies", "10.0.0.0/8, nginx.local", "'nginx.local'"),
])
def test_bad_values_stop_startup_naming_the_bad_part(env: str, value: str, named: str) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(**{env: value})
    assert named in str(err.value)
    assert ("FAULTLINE_" + env.upper()) in str(err.value)


def test_route_rules_replace_named_tiers_in_their_own_window() -> None:
    p = RatePolicy.parse("short:10/s,medium:100/m",
                         "POST /errors/batch=short:2/s,burst:5/100ms; GET /errors*=off")
    batch = p.tiers_for("POST", "/errors/batch")
    assert batch is not None
    assert [(t.name, t.limit, t.key) for t in batch] == [
        ("short", 2, "short@POST/errors/batch"), ("medium", 100, "medium"),
        ("burst", 5, "burst@POST/errors/batch")]
    assert p.tiers_for("POST", "/errors/log") is None  # not listed: not limited
    assert p.tiers_for("GET", "/errors/abc") is None  # prefix rule: off
    assert p.tiers_for("GET", "/errors") is None
    assert p.tiers_for("POST", "/errorsx") is None  # method differs from the GET prefix rule
    assert p.tiers_for("GET", "/health/ready") is None and p.tiers_for("GET", "/metrics") is None


def test_templates_match_one_segment() -> None:
    p = RatePolicy.parse("short:10/s", "GET /p/{id}/q=on; * /api/{project}/*=short:1/s")
    assert p.tiers_for("GET", "/p/7/q") == p.defaults
    assert p.tiers_for("GET", "/p//q") is None and p.tiers_for("GET", "/p/7/8/q") is None
    assert p.tiers_for("GET", "/p/7/q/x") is None
    rule = p.tiers_for("POST", "/api/9/envelope/")
    assert rule is not None and rule[0].limit == 1
    assert p.tiers_for("POST", "/api/9") is None


def test_longest_prefix_wins() -> None:
    p = RatePolicy.parse("short:10/s", "* /a*=short:1/s; * /a/b*=off")
    assert p.tiers_for("GET", "/a/b/c") is None
    rule = p.tiers_for("GET", "/a/x")
    assert rule is not None and rule[0].limit == 1


TRUSTED = ClientIp("127.0.0.1/32,::1/128,10.0.0.0/8")


@pytest.mark.parametrize(("peer", "xff", "xri", "client"), [
    ("203.0.113.9", b"1.2.3.4", b"5.6.7.8", "203.0.113.9"),  # untrusted peer: headers ignored
    ("203.0.113.9", b"garbage", None, "203.0.113.9"),
    ("127.0.0.1", b"1.2.3.4", None, "1.2.3.4"),  # nginx in front
    ("127.0.0.1", b"6.6.6.6, 1.2.3.4", None, "1.2.3.4"),  # the client prepended a spoofed hop
    ("127.0.0.1", b"1.2.3.4, 10.1.1.1", None, "1.2.3.4"),  # two trusted proxies
    ("127.0.0.1", b"1.2.3.4, not-an-ip, 10.1.1.1", None, "10.1.1.1"),  # garbage stops the walk
    ("127.0.0.1", b"not-an-ip", b"1.2.3.4", "127.0.0.1"),
    ("127.0.0.1", None, b"1.2.3.4", "1.2.3.4"),
    ("127.0.0.1", None, b"<script>", "127.0.0.1"),
    ("127.0.0.1", None, None, "127.0.0.1"),
    ("::ffff:127.0.0.1", b"1.2.3.4", None, "1.2.3.4"),  # IPv4-mapped peer is the IPv4 address
    ("2001:db8::1", None, None, "2001:db8::/64"),  # IPv6 keyed by /64
    ("127.0.0.1", b"2001:db8:0:0:ffff::7", None, "2001:db8::/64"),
    (None, b"1.2.3.4", None, "unknown"),
])
def test_client_ip(peer: str | None, xff: bytes | None, xri: bytes | None, client: str) -> None:
    assert TRUSTED.resolve(peer, xff, xri) == client


def test_no_trusted_proxies_means_never_trust_a_header() -> None:
    assert ClientIp("").resolve("127.0.0.1", b"1.2.3.4", b"1.2.3.4") == "127.0.0.1"
