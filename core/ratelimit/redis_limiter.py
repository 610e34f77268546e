"""The distributed limiter: one EVALSHA of core/scripts/ratelimit.lua per request, for all its tiers.

Exact across any number of API nodes (the script is atomic and reads Redis TIME, never a node clock).
Client CPU is the cost that matters (~150 µs per redis-py call, docs/performance-floor): one call, keys and
arguments prebuilt per tier set, members from a counter instead of a random source.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.keys import Keys
from core.ratelimit.limiter import Decision, LimiterUnavailable
from core.ratelimit.tiers import Tier
from core.redis import load_script


class RedisLimiter:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.script = load_script(redis, "ratelimit")
        # member = process token + counter: unique across processes and restarts without a Redis INCR
        self._token = secrets.token_hex(4)
        self._serial = itertools.count()
        self._prepared: dict[int, tuple[tuple[Tier, ...], list[str], list[int]]] = {}

    def _prepare(self, tiers: Sequence[Tier]) -> tuple[tuple[Tier, ...], list[str], list[int]]:
        # Tier tuples come from the policy and live as long as the process: cache by identity.
        found = self._prepared.get(id(tiers))
        if found is None or found[0] is not tiers:
            prefixes = [self.keys.ratelimit(t.key, "") for t in tiers]
            args = [v for t in tiers for v in (t.limit, t.window_ms)]
            found = self._prepared[id(tiers)] = (tuple(tiers), prefixes, args)
        return found

    async def hit(self, client: str, tiers: Sequence[Tier]) -> Decision:
        frozen, prefixes, args = self._prepare(tiers)
        member = f"{self._token}{next(self._serial):x}"
        try:
            allowed, index, remaining, wait_us, now_us = await self.script(
                keys=[p + client for p in prefixes], args=[member, *args])
        except (TimeoutError, RedisError, OSError) as exc:
            raise LimiterUnavailable(str(exc) or type(exc).__name__) from exc
        return Decision(bool(allowed), frozen[int(index) - 1], int(remaining), int(wait_us), int(now_us))

    async def close(self) -> None:
        """The Redis client belongs to the runtime, which closes it."""
