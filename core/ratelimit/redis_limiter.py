"""The distributed limiter: one EVALSHA of core/scripts/ratelimit.lua per request, for all its tiers.

Exact across any number of API nodes (the script is atomic and reads Redis TIME, never a node clock).
Client CPU is the cost that matters (one redis-py call ~150 µs, shared/notes/performance-floor.md; a request without
the limiter ~650 µs). So the calls of requests that arrive in the same event-loop iteration go out as ONE
pipeline (no MULTI: each script is atomic on its own, order is kept), which roughly halves the client
cost per call under load and adds no timer: the batch leaves at the end of the current iteration.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.keys import Keys
from core.ratelimit.limiter import Decision, LimiterUnavailable
from core.ratelimit.tiers import Tier
from core.redis import evalsha_pipelined, load_script

Call = tuple[list[str], list[str | int], "asyncio.Future[list[int]]"]


@dataclass(slots=True)
class FoldedHit:
    """One request's limiter check carried INTO its ingest script call (core/scripts/ingest.lua) instead of
    a call of its own: one Redis round trip per loop turn for both. The same windows, keys and algorithm as
    `hit` (_sliding_window.lua). Only where every key of the call shares one slot: one key shard (the
    limiter keys then carry the global tag, like the ingest keys), so Redis Cluster takes it too."""

    tiers: tuple[Tier, ...]
    member: str
    # tier count, then (window key prefix, limit, window ms) per tier: one list per tier set and process, sent
    # once per call whatever the number of requests using it (the script appends the client to the prefix)
    spec: list[str | int]
    client: str
    decision: Decision | None = None  # set by the ingest call that carried it
    sent: bool = False  # an ingest call carrying it was sent (its answer may be lost)

    def decide(self, values: list[int]) -> Decision:
        allowed, index, remaining, wait_us, now_us = (int(v) for v in values)
        self.decision = Decision(bool(allowed), self.tiers[index - 1], remaining, wait_us, now_us)
        return self.decision


class RedisLimiter:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.script = load_script(redis, "ratelimit")
        # member = process token + counter: unique across processes and restarts without a Redis INCR
        self._token = secrets.token_hex(4)
        self._serial = itertools.count()
        self._prepared: dict[int, tuple[tuple[Tier, ...], list[str], list[int]]] = {}
        self._specs: dict[int, tuple[tuple[Tier, ...], list[str | int]]] = {}  # FoldedHit.spec per tier set
        self._pending: list[Call] = []
        self._sends: set[asyncio.Task[None]] = set()

    def _prepare(self, tiers: Sequence[Tier]) -> tuple[tuple[Tier, ...], list[str], list[int]]:
        # Tier tuples come from the policy and live as long as the process: cache by identity.
        found = self._prepared.get(id(tiers))
        if found is None or found[0] is not tiers:
            names = [t.key for t in tiers]
            args = [v for t in tiers for v in (t.limit, t.window_ms)]
            found = self._prepared[id(tiers)] = (tuple(tiers), names, args)
        return found

    def fold(self, client: str, tiers: Sequence[Tier]) -> FoldedHit:
        """The check of one request, to be sent inside its ingest call (api/ingest.py). Folding needs one key
        shard (api/ratelimit.py), where a window's key is its tier's prefix + the client (core/keys.py)."""
        frozen, names, args = self._prepare(tiers)
        spec = self._specs.get(id(frozen))
        if spec is None or spec[0] is not frozen:
            prefixes = [self.keys.ratelimit(name, "") for name in names]
            spec = self._specs[id(frozen)] = (frozen, [len(names), *(v for i, prefix in enumerate(prefixes)
                                                                    for v in (prefix, args[2 * i], args[2 * i + 1]))])
        return FoldedHit(frozen, f"{self._token}{next(self._serial):x}", spec[1], client)

    async def hit(self, client: str, tiers: Sequence[Tier]) -> Decision:
        frozen, names, args = self._prepare(tiers)
        member = f"{self._token}{next(self._serial):x}"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._pending.append(([self.keys.ratelimit(n, client) for n in names], [member, *args], future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        allowed, index, remaining, wait_us, now_us = await future
        return Decision(bool(allowed), frozen[int(index) - 1], int(remaining), int(wait_us), int(now_us))

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._send(batch))
        self._sends.add(task)  # keep a reference until done (the loop holds only weak ones)
        task.add_done_callback(self._sends.discard)

    async def _send(self, batch: list[Call]) -> None:
        try:
            results = await self._evalsha_all(batch)
        except (TimeoutError, RedisError, OSError) as exc:
            error = LimiterUnavailable(str(exc) or type(exc).__name__)
            results = [error] * len(batch)
        except BaseException as exc:  # cancelled: no caller may wait for ever
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(LimiterUnavailable(repr(exc)))
            raise
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result if isinstance(result, LimiterUnavailable)
                                     else LimiterUnavailable(str(result)))
            else:
                future.set_result(result)  # type: ignore[arg-type]

    async def _evalsha_all(self, batch: list[Call]) -> list[object]:
        if len(batch) == 1:  # nothing to share: the plain call (EVALSHA, reloads the script if needed)
            keys, args, _ = batch[0]
            return [await self.script(keys=keys, args=args)]
        return await evalsha_pipelined(self.redis, self.script, [(k, a) for k, a, _ in batch])

    async def close(self) -> None:
        """The Redis client belongs to the runtime, which closes it."""
