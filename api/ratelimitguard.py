"""Who a rate-limited request is, and the limiter it asks: the guard api/ratelimit.py and api/fastpath.py share.

Client = (the project's ingest key, the client IP) when the key is one we know (X-Faultline-Key, or the
Sentry key), else the client IP (api/clientip.py). A browser-embedded (public) key is known to everybody:
keyed on the key alone, anyone could use up the project's windows; keyed on (key, IP), a client only ever
uses up its own. Unknown keys fall back to the IP, so inventing keys does not mint windows.

The breaker: after a backend error, requests are answered by the fail-open setting without asking Redis for
BREAKER_S, so a hung Redis costs one timeout per process per BREAKER_S instead of one per request.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, MutableMapping
from functools import lru_cache
from typing import Any

from prometheus_client import Counter

from api.clientip import ClientIp
from core.ratelimit.factory import make_limiter
from core.ratelimit.limiter import Limiter
from core.ratelimit.policy import RatePolicy
from core.ratelimit.redis_limiter import RedisLimiter
from core.runtime import Runtime

log = logging.getLogger("faultline.ratelimit")
REFUSED = Counter("faultline_rate_limited_total", "Requests refused by the rate limiter", ["tier"])
UNAVAILABLE = Counter("faultline_rate_limiter_unavailable_total", "Limiter backend errors", ["action"])

BREAKER_S = 0.25
# The routes whose check can ride in their ingest call (api/fastpath.py answers both)
FOLDABLE = frozenset({("POST", "/errors/log"), ("POST", "/errors/batch")})


class RateLimitGuard:
    """What the limiter's callers need; the limiter and the key lookup are bound at lifespan start-up."""

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

    def client_of(self, scope: MutableMapping[str, Any]) -> str:
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

    def closed(self) -> bool:
        """The breaker lets calls through (no backend error in the last BREAKER_S)."""
        return time.monotonic() >= self.down_until

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
