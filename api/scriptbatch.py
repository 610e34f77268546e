"""Script calls of one event-loop turn sent as one pipeline: one write, one read, one await.

With key shards on ONE Redis server (FAULTLINE_REDIS_SHARDS > 1 on redis:// or sentinel), a loop turn of
the ingest path makes one script call per shard it touches; sent as N concurrent calls they cost N
round trips of client CPU (~150 us each in redis-py, shared/notes/performance-floor.md), which made 16
shards cost ~+50 % CPU per event against 1. Pipelined (no MULTI: each script is atomic on its own), they
cost about one; on one server the pipeline is one packed write on one connection (core/rawpipeline.py),
without redis-py's Pipeline object (~100 us per send). Each call keeps its own answer, error and timeout
handling (api/ingestrun.py `_call`): a pipeline that fails fails every call in it, and each caller's re-run
protocol decides what was counted.

Not for Redis Cluster: there the shards live on different nodes and the calls stay concurrent (a cluster
pipeline would split them per node anyway).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from core.redis import evalsha_pipelined

Call = tuple[list[str], list[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    def __init__(self, redis: Redis, script: Callable[[], Any]) -> None:
        """`script`: returns the script to call, read at each send (the ingestor's current one)."""
        self.redis = redis
        self.script = script
        self._pending: list[Call] = []
        self._sends: set[asyncio.Task[None]] = set()  # strong references (the loop keeps weak ones)

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((keys, args, future))
        if len(self._pending) == 1:  # the rest of this turn's calls join before the flush runs
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, batch: list[Call]) -> None:
        try:
            results = await self._execute(batch)
        except BaseException as exc:  # every caller gets the error (a cancelled send included)
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else ConnectionError(repr(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():  # its caller stopped waiting (timeout): its re-run finds out what this did
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _execute(self, batch: list[Call]) -> list[Any]:
        script = self.script()
        if len(batch) == 1:  # nothing to share: the plain call (EVALSHA, reloads the script if needed)
            keys, args, _ = batch[0]
            return [await script(keys=keys, args=args)]
        if not isinstance(script, AsyncScript):  # wrapped (the tests' lost-reply spies): call it per call
            return list(await asyncio.gather(*(script(keys=k, args=a) for k, a, _ in batch), return_exceptions=True))
        return await evalsha_pipelined(self.redis, script, [(k, a) for k, a, _ in batch])
