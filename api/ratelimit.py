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

Folded into ingest (POST /errors/log and /errors/batch, Redis backend, one key shard): instead of a call of
its own, the request's check rides in its ingest script call (core/scripts/ingest.lua; one Redis round trip
per loop turn for both, the limiter's cost under `make bench` was ~25 % of the throughput). Same windows,
keys and algorithm; the check runs before anything is counted and a refused request counts nothing. A
request answered before its ingest call (bad key, bad body: a 4xx) gets the limiter's own call when its
answer starts, and the refusal replaces that answer, so every request of a limited route is logged or
refused exactly as before. With several key shards the limiter keys carry each client's own tag (core/keys.py),
another slot than the ingest call's, so there (and on the memory backend) the check stays a call of its own.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, MutableMapping
from functools import lru_cache
from typing import Any

import orjson
from prometheus_client import Counter

from api.clientip import ClientIp
from api.errors import ApiError
from core.ratelimit.factory import make_limiter, policy_of
from core.ratelimit.limiter import Decision, Limiter, LimiterUnavailable
from core.ratelimit.policy import RatePolicy
from core.ratelimit.redis_limiter import FoldedHit, RedisLimiter
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
# The routes whose check can ride in their ingest call; FOLDED_HIT: where the route finds it (scope["state"])
FOLDABLE = frozenset({("POST", "/errors/log"), ("POST", "/errors/batch")})
FOLDED_HIT = "ratelimit_hit"


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
        self.folded: frozenset[tuple[str, str]] = frozenset()  # (method, path) checked inside the ingest call
        # Per request these were ~5 % of an API process's CPU with the limiter on (py-spy): the same few
        # proxies, clients and keys come back all the time. Bounded caches of pure functions of their inputs
        # (whether a key is known is still asked per request: a new project's key must count at once).
        self._resolve = lru_cache(maxsize=4096)(client_ip.resolve)
        self._key_label = lru_cache(maxsize=4096)(_key_label)

    def bind(self, limiter: Limiter, known_key: Callable[[str], bool]) -> None:
        self.limiter, self.known_key = limiter, known_key

    def start(self, rt: Runtime) -> None:
        """At lifespan start-up: the backend the settings select, and the node's project-key cache."""
        limiter = make_limiter(rt.settings, rt.redis, rt.keys)
        self.bind(limiter, rt.knows_key)
        # one key shard: the limiter keys share the ingest keys' tag (one slot, so a cluster takes it too)
        self.folded = FOLDABLE if isinstance(limiter, RedisLimiter) and rt.keys.shards == 1 else frozenset()

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
        ip = self._resolve(peer[0] if peer else None, forwarded, real_ip)
        if key and self.known_key(key.decode("latin-1")):
            return self._key_label(key) + ip
        return "ip:" + ip

    def failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self.down_until = now + BREAKER_S
        if now - self._last_warning > 5.0:  # at most one line per 5 s per process during an outage
            self._last_warning = now
            log.warning("rate limiter unavailable (%s): %s", exc, "letting requests through" if self.fail_open
                        else "refusing with 503")


def _key_label(key: bytes) -> str:
    # hashed: ingest keys are secrets and must not show up in Redis key names (MONITOR, SCAN)
    return "k:" + hashlib.blake2b(key, digest_size=10).hexdigest() + "|ip:"


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


def limited_error(d: Decision) -> ApiError:
    """The 429 of a request the limiter refused inside its ingest call: the same body as the middleware's own
    (the one error shape, api/errors.py); the middleware adds the X-RateLimit headers."""
    return ApiError(429, "rate_limited", "Rate limit exceeded",
                    {"retry_after_ms": d.retry_after_ms, "tier": d.tier.name},
                    headers={"Retry-After": str(d.retry_after_s)})


def folded_hit(scope: MutableMapping[str, Any]) -> FoldedHit | None:
    """The limiter check a folded route must carry into its ingest call (None: not folded)."""
    return (scope.get("state") or {}).get(FOLDED_HIT)  # type: ignore[no-any-return]


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
        if (scope["method"], scope["path"]) in guard.folded and time.monotonic() >= guard.down_until:
            return await self._folded(scope, receive, send, tiers)
        decision = await self._decide(scope, tiers)
        if await self._refused(scope, send, decision):
            return None
        if decision is None:  # unavailable, failing open
            return await self.app(scope, receive, send)
        headers = limit_headers(decision)

        async def send_with_limits(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        return await self.app(scope, receive, send_with_limits)

    async def _decide(self, scope: Scope, tiers: Any) -> Decision | None:
        """The limiter's own call; None when it is unavailable (or its breaker is open)."""
        guard = self.guard
        if time.monotonic() >= guard.down_until and guard.limiter is not None:
            try:
                return await guard.limiter.hit(guard.client_of(scope), tiers)
            except LimiterUnavailable as exc:
                guard.failed(exc)
        return None

    async def _refused(self, scope: Scope, send: Callable[..., Any], decision: Decision | None) -> bool:
        """Answer a refusal (429; 503 when unavailable and failing closed): True when it was answered."""
        guard = self.guard
        if decision is None:
            UNAVAILABLE.labels("allowed" if guard.fail_open else "refused").inc()
            if guard.fail_open:
                return False
            body = {"error": "unavailable", "message": "rate limiter unavailable, retry shortly"}
            await _answer(send, 503, body, [(b"retry-after", b"1")])
            return True
        if decision.allowed:
            return False
        REFUSED.labels(decision.tier.name).inc()
        headers = limit_headers(decision)
        retry_s = str(decision.retry_after_s).encode()
        headers.append((b"retry-after", retry_s))
        if scope["path"].startswith("/api/"):  # Sentry SDKs read this one: all categories, this key
            headers.append((b"x-sentry-rate-limits", retry_s + b"::key"))
        # the one error shape of the API (api/errors.py): error, message, details
        await _answer(send, 429, {"error": "rate_limited", "message": "Rate limit exceeded",
                                  "details": {"retry_after_ms": decision.retry_after_ms,
                                              "tier": decision.tier.name}}, headers)
        return True

    async def _folded(self, scope: Scope, receive: Callable[..., Any], send: Callable[..., Any],
                      tiers: Any) -> None:
        """The check rides in the ingest call (api/ingest.py); the answer gets its headers here."""
        guard = self.guard
        hit = guard.limiter.fold(guard.client_of(scope), tiers)  # type: ignore[union-attr]
        scope.setdefault("state", {})[FOLDED_HIT] = hit
        replaced = False

        async def send_folded(message: dict[str, Any]) -> None:
            nonlocal replaced
            if replaced:
                return  # the route's own answer, replaced by the limiter's refusal
            if message["type"] == "http.response.start":
                # An ingest call that failed (late, shed, unanswered) answers its own 503 and opens no breaker:
                # its budget already bounds the wait, and one late call must not refuse the node's next 250 ms.
                decision = hit.decision
                if decision is None and not hit.sent:
                    # answered before its ingest call (a 4xx): the limiter's own call decides, as unfolded
                    decision = await self._decide(scope, tiers)
                    if await self._refused(scope, send, decision):
                        replaced = True
                        return
                elif decision is not None and not decision.allowed:
                    REFUSED.labels(decision.tier.name).inc()  # the route answered limited_error's 429
                if decision is not None:
                    message["headers"] = [*message.get("headers", ()), *limit_headers(decision)]
            await send(message)

        await self.app(scope, receive, send_folded)


def rate_limiting(app: Any, settings: Settings) -> RateLimitGuard | None:
    """Install the middleware on `app` (settings were validated at start-up); None when disabled."""
    if not settings.rate_limit_enabled:
        return None
    guard = RateLimitGuard(policy_of(settings), ClientIp(settings.trusted_proxies),
                           fail_open=settings.rate_limit_fail_open)
    app.add_middleware(RateLimitMiddleware, guard=guard)
    return guard
