"""Rate limiting at the door: answers 429 before any routing or body parsing.

Pure ASGI rather than BaseHTTPMiddleware, which runs every request in an extra task and pipes the
response through a memory stream (shared/notes/performance-floor.md lists pure ASGI among the levers that counted).
A refused request costs one limiter call: the route never runs, so nothing is parsed, enqueued or counted.
Who the client is, the backend and its breaker: api/ratelimitguard.py. Only the routes the policy lists are
limited (core/ratelimit/policy.py): a 404 costs no window.
Headers on every limited response: X-RateLimit-Limit / -Remaining for the tier closest to its limit and
X-RateLimit-Reset, the epoch second when that tier's oldest request leaves its window (Remaining goes up).

Two doors, one decision: RateLimitMiddleware wraps the `send` of every other route; `Door.answer` wraps the
answer of the two ingest POSTs, which api/fastpath.py computes as a value before anything is sent.
Folded into ingest (those two POSTs, Redis backend, one key shard): instead of a call of its own, the
request's check rides in its ingest script call (core/scripts/ingest.lua; one Redis round trip per loop turn
for both, the limiter's cost under `make bench` was ~25 % of the throughput). Same windows, keys and
algorithm; the check runs before anything is counted and a refused request counts nothing. A request
answered before its ingest call (bad key, bad body: a 4xx) gets the limiter's own call then, and the refusal
replaces that answer, so every request of a limited route is logged or refused exactly as before. With
several key shards the limiter keys carry each client's own tag (core/keys.py), another slot than the
ingest call's, so there (and on the memory backend) the check stays a call of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from api.clientip import ClientIp
from api.errors import ApiError
from api.ratelimitguard import REFUSED, UNAVAILABLE, RateLimitGuard
from core.ratelimit.factory import policy_of
from core.ratelimit.limiter import Decision, LimiterUnavailable
from core.ratelimit.redis_limiter import FoldedHit
from core.settings import Settings

Scope = MutableMapping[str, Any]
ASGIApp = Callable[..., Any]
Headers = list[tuple[bytes, bytes]]
Answer = tuple[int, bytes, Headers]  # status, JSON body, headers: an answer not sent yet
JSON = (b"content-type", b"application/json")
FOLDED_HIT = "ratelimit_hit"  # where a folded route finds its check (scope["state"])
_UNAVAILABLE = orjson.dumps({"error": "unavailable", "message": "rate limiter unavailable, retry shortly"})


def limit_headers(d: Decision) -> Headers:
    return [(b"x-ratelimit-limit", str(d.tier.limit).encode()),
            (b"x-ratelimit-remaining", str(max(d.remaining, 0)).encode()),
            (b"x-ratelimit-reset", str(d.reset_epoch_s).encode())]


def limited_error(d: Decision) -> ApiError:
    """The 429 of a request the limiter refused inside its ingest call: the same body as the door's own
    (the one error shape, api/errors.py); the door adds the X-RateLimit headers."""
    return ApiError(429, "rate_limited", "Rate limit exceeded",
                    {"retry_after_ms": d.retry_after_ms, "tier": d.tier.name},
                    headers={"Retry-After": str(d.retry_after_s)})


def folded_hit(scope: MutableMapping[str, Any]) -> FoldedHit | None:
    """The limiter check a folded route must carry into its ingest call (None: not folded)."""
    return (scope.get("state") or {}).get(FOLDED_HIT)  # type: ignore[no-any-return]


class Door:
    """The decision and the refusal, shared by both doors."""

    def __init__(self, guard: RateLimitGuard) -> None:
        self.guard = guard

    async def decide(self, scope: Scope, tiers: Any) -> Decision | None:
        """The limiter's own call; None when it is unavailable (or its breaker is open)."""
        guard = self.guard
        if guard.closed() and guard.limiter is not None:
            try:
                return await guard.limiter.hit(guard.client_of(scope), tiers)
            except LimiterUnavailable as exc:
                guard.failed(exc)
        return None

    def refusal(self, scope: Scope, decision: Decision | None) -> Answer | None:
        """The refusal (429; 503 when unavailable and failing closed), or None: let the request through."""
        if decision is None:
            UNAVAILABLE.labels("allowed" if self.guard.fail_open else "refused").inc()
            return None if self.guard.fail_open else (503, _UNAVAILABLE, [JSON, (b"retry-after", b"1")])
        if decision.allowed:
            return None
        REFUSED.labels(decision.tier.name).inc()
        headers = [JSON, *limit_headers(decision)]
        retry_s = str(decision.retry_after_s).encode()
        headers.append((b"retry-after", retry_s))
        if scope["path"].startswith("/api/"):  # Sentry SDKs read this one: all categories, this key
            headers.append((b"x-sentry-rate-limits", retry_s + b"::key"))
        # the one error shape of the API (api/errors.py): error, message, details
        return 429, orjson.dumps({"error": "rate_limited", "message": "Rate limit exceeded",
                                  "details": {"retry_after_ms": decision.retry_after_ms,
                                              "tier": decision.tier.name}}), headers

    async def answer(self, scope: Scope, run: Callable[[], Awaitable[Answer]]) -> Answer:
        """`run`'s answer to a request, with the limiter's check and headers, or the limiter's refusal."""
        guard = self.guard
        tiers = guard.policy.tiers_for(scope["method"], scope["path"]) if guard.limiter is not None else None
        if tiers is None:
            return await run()
        if (scope["method"], scope["path"]) in guard.folded and guard.closed():
            return await self._folded(scope, tiers, run)
        decision = await self.decide(scope, tiers)
        refused = self.refusal(scope, decision)
        if refused is not None:
            return refused
        status, body, headers = await run()
        return status, body, headers if decision is None else [*headers, *limit_headers(decision)]

    async def _folded(self, scope: Scope, tiers: Any, run: Callable[[], Awaitable[Answer]]) -> Answer:
        """The check rides in the ingest call (api/ingest.py); the answer gets its headers here."""
        guard = self.guard
        hit = guard.limiter.fold(guard.client_of(scope), tiers)  # type: ignore[union-attr]
        scope.setdefault("state", {})[FOLDED_HIT] = hit
        status, body, headers = await run()
        # An ingest call that failed (late, shed, unanswered) answers its own 503 and opens no breaker: its
        # budget already bounds the wait, and one late call must not refuse the node's next 250 ms.
        decision = hit.decision
        if decision is None and not hit.sent:
            # answered before its ingest call (a 4xx): the limiter's own call decides, as unfolded
            decision = await self.decide(scope, tiers)
            refused = self.refusal(scope, decision)
            if refused is not None:
                return refused
        elif decision is not None and not decision.allowed:
            REFUSED.labels(decision.tier.name).inc()  # the route answered limited_error's 429
        return status, body, headers if decision is None else [*headers, *limit_headers(decision)]


class RateLimitMiddleware:
    """The door of every route but the ingest POSTs (api/fastpath.py answers those through Door.answer)."""

    def __init__(self, app: ASGIApp, guard: RateLimitGuard) -> None:
        self.app = app
        self.door = Door(guard)

    async def __call__(self, scope: Scope, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        guard = self.door.guard
        if scope["type"] != "http" or guard.limiter is None:
            return await self.app(scope, receive, send)
        tiers = guard.policy.tiers_for(scope["method"], scope["path"])
        if tiers is None:
            return await self.app(scope, receive, send)
        decision = await self.door.decide(scope, tiers)
        refused = self.door.refusal(scope, decision)
        if refused is not None:
            status, body, headers = refused
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return None
        if decision is None:  # unavailable, failing open
            return await self.app(scope, receive, send)
        extra = limit_headers(decision)

        async def send_with_limits(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
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
