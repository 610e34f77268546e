"""The middleware inside a real app (real Redis, SQLite): headers, 429 body, exemptions, route rules,
client identity, fail closed/open, the in-process backend, and X-Request-ID."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from api.app import create_app
from core.db import repo
from core.db.engine import make_engine
from core.db.migrate import migrate
from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings
from faultline.services import free_port
from health import probes

KEY = "rl-test-ingest-key-0123456789"
EVENT = {"message": "TypeError: x is undefined", "service": "web"}


async def prepare(settings: Settings) -> None:
    await migrate(settings)
    engine = make_engine(settings)
    async with engine.begin() as conn:
        await repo.ensure_project(conn, "rl", KEY)
    await engine.dispose()


@asynccontextmanager
async def client(settings: Settings, peer: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    app.include_router(probes.router)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as c:
            c.headers.update({"Authorization": f"Bearer {settings.admin_token}"})
            yield c


@pytest.fixture
async def limited(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def make(**kw: Any) -> Settings:
        return make_settings(**{"rate_limit_enabled": True, "rate_limits": "short:3/5s,long:1000/h", **kw})
    await prepare(make())
    return make


async def test_headers_429_body_and_a_refused_request_is_not_ingested(
        limited: Callable[..., Settings]) -> None:
    settings = limited()
    keys = Keys.from_settings(settings)
    redis = make_redis(settings)
    async with client(settings) as c:
        for left in (2, 1, 0):
            r = await c.post("/errors/log", json=EVENT, headers={"X-Faultline-Key": KEY})
            assert r.status_code == 202, r.text
            assert r.headers["x-ratelimit-limit"] == "3" and r.headers["x-ratelimit-remaining"] == str(left)
            assert int(r.headers["x-ratelimit-reset"]) > 1_700_000_000
        queued = await redis.xlen(keys.stream)
        counted = sum(int(v) for v in (await redis.hgetall(keys.live_counts)).values())
        r = await c.post("/errors/log", json=EVENT, headers={"X-Faultline-Key": KEY})
        assert r.status_code == 429
        body = r.json()
        assert set(body) == {"error", "message", "details"}  # the one error shape (api/errors.py)
        assert body["error"] == "rate_limited" and body["message"] == "Rate limit exceeded"
        assert body["details"]["tier"] == "short"
        retry_ms = body["details"]["retry_after_ms"]
        assert 4000 < retry_ms <= 5000
        # integer seconds, rounded up
        assert r.headers["retry-after"] == str(-(-retry_ms // 1000))
        assert r.headers["x-ratelimit-remaining"] == "0"
        # no enqueue, no counting
        assert await redis.xlen(keys.stream) == queued == 3
        assert sum(int(v) for v in (await redis.hgetall(keys.live_counts)).values()) == counted == 3
        # probes and metrics are never limited
        for _ in range(10):
            r = await c.get("/health/live")
            assert r.status_code == 200 and "x-ratelimit-limit" not in r.headers
        assert (await c.get("/metrics")).status_code == 200
    await redis.aclose()


async def test_batch_route_has_its_own_tighter_window(limited: Callable[..., Settings]) -> None:
    settings = limited(rate_limits="short:10/5s,long:1000/h",
                       rate_limit_routes="POST /errors/log=on; POST /errors/batch=short:2/s")
    async with client(settings) as c:
        batch = {"events": [EVENT]}
        codes = [(await c.post("/errors/batch", json=batch, headers={"X-Faultline-Key": KEY})).status_code
                 for _ in range(3)]
        assert codes == [202, 202, 429]
        r = await c.post("/errors/log", json=EVENT, headers={"X-Faultline-Key": KEY})
        # the batch rule's "short" is its own window: the shared one has only this request in it
        assert r.status_code == 202 and r.headers["x-ratelimit-remaining"] == "9"


async def test_a_public_key_hammered_elsewhere_by_another_ip_never_blocks_the_owners_ingest(
        limited: Callable[..., Settings]) -> None:
    """A browser-embedded key sent to GET /nope (and to every other route) from another IP, and
    even its own ingest windows filled from that IP: the owner's ingest keeps getting 202."""
    settings = limited()  # short:3/5s per client, the default route list
    key = {"X-Faultline-Key": KEY}
    async with client(settings, peer="203.0.113.66") as attacker, client(settings, peer="198.51.100.7") as owner:
        for path in ("/nope", "/errors/log/x", "/api/1/nothing", "/dashboard/static/nope.js", "/docs"):
            codes = {(await attacker.get(path, headers=key)).status_code for _ in range(25)}
            assert 429 not in codes, (path, codes)
        codes = {(await attacker.post("/nope", json=EVENT, headers=key)).status_code for _ in range(25)}
        assert codes == {404}
        # the attacker uses up its own (key, IP) ingest window ...
        codes = [(await attacker.post("/errors/log", json=EVENT, headers=key)).status_code for _ in range(6)]
        assert codes == [202, 202, 202, 429, 429, 429]
        # ... and the owner, from its own address, is untouched: a full window of 202s
        for left in (2, 1, 0):
            r = await owner.post("/errors/log", json=EVENT, headers=key)
            assert r.status_code == 202 and r.headers["x-ratelimit-remaining"] == str(left), r.text
    redis = make_redis(settings)
    names = [k.decode() async for k in redis.scan_iter(match=Keys.from_settings(settings).ratelimit("*", "*"))]
    await redis.aclose()
    assert names and not any("nope" in n or KEY in n for n in names)
    assert {n.rsplit("|", 1)[-1] for n in names if "|" in n} == {"ip:203.0.113.66", "ip:198.51.100.7"}


async def test_unknown_keys_fall_back_to_the_ip(limited: Callable[..., Settings]) -> None:
    """Inventing ingest keys does not mint fresh windows."""
    async with client(limited()) as c:
        codes = [(await c.post("/errors/log", json=EVENT, headers={"X-Faultline-Key": secrets.token_hex(8)})
                  ).status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429]
        # the known key has its own window, untouched by the IP's
        assert (await c.post("/errors/log", json=EVENT, headers={"X-Faultline-Key": KEY})).status_code == 202


async def test_forwarded_for_counts_only_from_a_trusted_peer(limited: Callable[..., Settings]) -> None:
    untrusted = limited(trusted_proxies="10.0.0.0/8")  # the test client (127.0.0.1) is not a proxy
    async with client(untrusted) as c:
        spoofed = [{"X-Forwarded-For": f"198.51.100.{i}", "X-Real-IP": f"198.51.100.{i}"} for i in range(4)]
        codes = [(await c.get("/errors", headers=h)).status_code for h in spoofed]
        assert codes == [200, 200, 200, 429]  # rotating a spoofed header did not change the key
    trusted = limited()  # 127.0.0.1 is a trusted proxy by default: its header names the client
    async with client(trusted, peer="127.0.0.1") as c:
        codes = [(await c.get("/errors", headers={"X-Forwarded-For": f"198.51.100.{i // 3}"})).status_code
                 for i in range(7)]
        assert codes == [200, 200, 200, 200, 200, 200, 200]
        assert (await c.get("/errors", headers={"X-Forwarded-For": "198.51.100.0"})).status_code == 429


@pytest.mark.parametrize("fail_open", [False, True])
async def test_redis_down_fails_closed_by_default(limited: Callable[..., Settings], fail_open: bool) -> None:
    settings = limited(redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit_fail_open=fail_open)
    async with client(settings) as c:
        r = await c.get("/errors")
        if fail_open:
            assert r.status_code == 200 and "x-ratelimit-limit" not in r.headers
        else:
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.json() == {"error": "unavailable", "message": "rate limiter unavailable, retry shortly"}


async def test_memory_backend_limits_without_redis_keys(limited: Callable[..., Settings]) -> None:
    settings = limited(rate_limit_backend="memory")
    redis = make_redis(settings)
    async with client(settings) as c:
        codes = [(await c.get("/errors")).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
    assert [k async for k in redis.scan_iter(match=Keys.from_settings(settings).ratelimit("*", "*"))] == []
    await redis.aclose()


async def test_disabled_means_no_middleware(limited: Callable[..., Settings]) -> None:
    async with client(limited(rate_limit_enabled=False)) as c:
        for _ in range(20):
            r = await c.get("/errors")
            assert r.status_code == 200 and "x-ratelimit-limit" not in r.headers


async def test_request_id_is_kept_generated_and_logged(limited: Callable[..., Settings],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="faultline.access")
    async with client(limited()) as c:
        r = await c.get("/errors", headers={"X-Request-ID": "edge-abc.123"})
        assert r.headers["x-request-id"] == "edge-abc.123"
        forged = await c.get("/errors", headers={"X-Request-ID": "evil\nINFO fake log line"})
        generated = forged.headers["x-request-id"]
        assert len(generated) == 32 and int(generated, 16) >= 0
        r = await c.get("/errors/" + "0" * 64, headers={"X-Request-ID": "rid-404-check"})
        assert r.status_code == 404
        r = await c.get("/errors/" + "1" * 64, headers={"X-Request-ID": "rid-fwd", "X-Forwarded-For": "203.0.113.9"})
        assert r.status_code == 404
    assert any("rid=rid-404-check" in m and " 404 " in m for m in caplog.messages)
    # the peer as the socket says, and what a proxy forwarded as it said it (quoted: a client may write it)
    assert any("rid=rid-fwd" in m and "forwarded='203.0.113.9'" in m for m in caplog.messages), caplog.messages
    assert not any("edge-abc.123" in m for m in caplog.messages)  # a 200 is logged only at DEBUG


async def test_hung_redis_answers_503_without_every_request_waiting(limited: Callable[..., Settings]) -> None:
    """A Redis that accepts connections and never answers: the first call times out, the breaker answers
    the next ones at once (10 requests at 0.3 s each would take 3 s)."""
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = limited(redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout=0.3)
    try:
        async with client(settings) as c:
            started = time.monotonic()
            codes = [(await c.get("/errors")).status_code for _ in range(10)]
            elapsed = time.monotonic() - started
    finally:
        server.close()
    assert codes == [503] * 10
    assert elapsed < 2.0, elapsed


async def test_sentry_key_identifies_the_client(limited: Callable[..., Settings]) -> None:
    """The Sentry SDK sends its key in X-Sentry-Auth (or ?sentry_key=): a known key gets its own window."""
    async with client(limited()) as c:
        auth = {"X-Sentry-Auth": f"Sentry sentry_key={KEY}, sentry_version=7, sentry_client=test/1.0"}
        remaining = [(await c.get("/errors", headers=auth)).headers["x-ratelimit-remaining"] for _ in range(2)]
        query = await c.get(f"/errors?sentry_key={KEY}&sentry_version=7")
        by_ip = await c.get("/errors")
    assert remaining == ["2", "1"] and query.headers["x-ratelimit-remaining"] == "0"
    assert by_ip.headers["x-ratelimit-remaining"] == "2"  # the IP's window is a different one
