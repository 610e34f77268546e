"""Rate limiting at the door: a pure ASGI middleware that answers 429 before any routing or body parsing.

Pure ASGI rather than BaseHTTPMiddleware, which runs every request in an extra task and pipes the
response through a memory stream (shared/notes/performance-floor.md lists pure ASGI among the levers that counted).
A refused request costs one script call: the route never runs, so nothing is parsed, enqueued or counted.

Client = (the project's ingest key, the client IP) when the key is one we know (X-Faultline-Key, or the
Sentry key), else the client IP (api/clientip.py). A browser-embedded (public) key is known to everybody:
keyed on the key alone, anyone could use up the project's windows; keyed on (key, IP), a client only ever
uses up its own. Unknown keys fall back to the IP, so inventing keys does not mint windows. Only the routes
the policy lists are limited (core/ratelimit/policy.py): a 404 costs no window.
Headers on every limited response: X-RateLimit-Limit / -Remaining for the tier closest to its limit and
X-RateLimit-Reset, the epoch second when that tier's oldest request leaves its window (Remaining goes up).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import Counter

from api.clientip import ClientIp
from core.ratelimit.factory import make_limiter, policy_of
from core.ratelimit.limiter import Decision, Limiter, LimiterUnavailable
from core.ratelimit.policy import RatePolicy
from core.runtime import Runtime
from core.settings import Settings

log = logging.getLogger("faultline.ratelimit")
REFUSED = Counter("faultline_rate_limited_total", "Requests refused by the rate limiter", ["tier"])
UNAVAILABLE = Counter("faultline_rate_limiter_unavailable_total", "Limiter backend errors", ["action"])

Scope = dict[str, Any]
ASGIApp = Callable[..., Any]
JSON = (b"content-type", b"application/json")
# After a backend error, answer by the fail-open setting without asking Redis for 250 ms: a hung Redis then
# costs one 0.5 s timeout per process per 250 ms instead of one per request (503 stays fast).
BREAKER_S = 0.25


class RateLimitGuard:
    """What the middleware needs; the limiter and the key lookup are bound at lifespan start-up."""

    def __init__(self, policy: RatePolicy, client_ip: ClientIp, fail_open: bool) -> None:
        self.policy = policy
        self.client_ip = client_ip
        self.fail_open = fail_open
        self.limiter: Limiter | None = None
        self.known_key: Callable[[str], bool] = lambda _: False
        self._last_warning = 0.0
        self.down_until = 0.0

    def bind(self, limiter: Limiter, known_key: Callable[[str], bool]) -> None:
        self.limiter, self.known_key = limiter, known_key

    def start(self, rt: Runtime) -> None:
        """At lifespan start-up: the backend the settings select, and the node's project-key cache."""
        self.bind(make_limiter(rt.settings, rt.redis, rt.keys), rt.knows_key)

    def client_of(self, scope: Scope) -> str:
        key = forwarded = real_ip = None
        for name, value in scope["headers"]:
            if name == b"x-faultline-key":
                key = value
            elif name == b"x-forwarded-for":
                forwarded = value if forwarded is None else forwarded + b"," + value
            elif name == b"x-real-ip":
                real_ip = value
            elif name == b"x-sentry-auth" and key is None:
                key = _sentry_key(value)
        query = scope.get("query_string", b"")
        if key is None and b"sentry_key=" in query:
            key = _sentry_key(query.replace(b"&", b","))
        peer = scope.get("client")
        ip = "ip:" + self.client_ip.resolve(peer[0] if peer else None, forwarded, real_ip)
        if key and self.known_key(key.decode("latin-1")):
            # hashed: ingest keys are secrets and must not show up in Redis key names (MONITOR, SCAN)
            return "k:" + hashlib.blake2b(key, digest_size=10).hexdigest() + "|" + ip
        return ip

    def failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self.down_until = now + BREAKER_S
        if now - self._last_warning > 5.0:  # at most one line per 5 s per process during an outage
            self._last_warning = now
            log.warning("rate limiter unavailable (%s): %s", exc, "letting requests through" if self.fail_open
                        else "refusing with 503")


def _sentry_key(header: bytes) -> bytes | None:
    for part in header.split(b","):
        name, _, value = part.strip().partition(b"=")
        if name.strip().lower() in (b"sentry_key", b"sentry sentry_key"):
            return value.strip()
    return None


def limit_headers(d: Decision) -> list[tuple[bytes, bytes]]:
    return [(b"x-ratelimit-limit", str(d.tier.limit).encode()),
            (b"x-ratelimit-remaining", str(max(d.remaining, 0)).encode()),
            (b"x-ratelimit-reset", str(d.reset_epoch_s).encode())]


async def _answer(send: Callable[..., Any], status: int, body: dict[str, Any],
                  headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [JSON, *headers]})
    await send({"type": "http.response.body", "body": orjson.dumps(body)})


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, guard: RateLimitGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        guard = self.guard
        if scope["type"] != "http" or guard.limiter is None:
            return await self.app(scope, receive, send)
        tiers = guard.policy.tiers_for(scope["method"], scope["path"])
        if tiers is None:
            return await self.app(scope, receive, send)
        decision = None
        if time.monotonic() >= guard.down_until:
            try:
                decision = await guard.limiter.hit(guard.client_of(scope), tiers)
            except LimiterUnavailable as exc:
                guard.failed(exc)
        if decision is None:
            UNAVAILABLE.labels("allowed" if guard.fail_open else "refused").inc()
            if guard.fail_open:
                return await self.app(scope, receive, send)
            body = {"error": "unavailable", "message": "rate limiter unavailable, retry shortly"}
            return await _answer(send, 503, body, [(b"retry-after", b"1")])
        headers = limit_headers(decision)
        if not decision.allowed:
            REFUSED.labels(decision.tier.name).inc()
            retry_s = str(decision.retry_after_s).encode()
            headers.append((b"retry-after", retry_s))
            if scope["path"].startswith("/api/"):  # Sentry SDKs read this one: all categories, this key
                headers.append((b"x-sentry-rate-limits", retry_s + b"::key"))
            # the one error shape of the API (api/errors.py): error, message, details
            return await _answer(send, 429, {"error": "rate_limited", "message": "Rate limit exceeded",
                                             "details": {"retry_after_ms": decision.retry_after_ms,
                                                         "tier": decision.tier.name}}, headers)

        async def send_with_limits(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        return await self.app(scope, receive, send_with_limits)


def rate_limiting(app: Any, settings: Settings) -> RateLimitGuard | None:
    """Install the middleware on `app` (settings were validated at start-up); None when disabled."""
    if not settings.rate_limit_enabled:
        return None
    guard = RateLimitGuard(policy_of(settings), ClientIp(settings.trusted_proxies),
                           fail_open=settings.rate_limit_fail_open)
    app.add_middleware(RateLimitMiddleware, guard=guard)
    return guard
