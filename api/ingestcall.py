"""The ingest script calls of an API process (api/ingest.py makes their arguments): coalesced per key shard,
bounded in flight; each call and its re-run follow api/ingestrun.py, where a 503 means "not counted".

Requests that arrive in the same event-loop turn share script calls and queued tasks: under load a node has
tens of requests in flight; coalescing them costs no latency (the flush runs later in the same loop turn) and
turns N Redis round trips + N worker tasks into a few. A call holds whole requests up to
ingest_call_max_events, so it stays short and a request is counted all or none; the calls of one flush go out
together, at most CALLS_IN_FLIGHT at a time per shard.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from api.ingestrun import SHED, Pending, RedisClock, ScriptRuns
from api.scriptbatch import ScriptBatcher
from core import metrics
from core.redis import is_cluster, load_script
from core.runtime import Runtime
from core.sentinel import ReplicatedScript

CALLS_IN_FLIGHT = 2


class QueueFull(Exception):
    def __init__(self, depth: int) -> None:
        super().__init__(f"queue depth {depth}")
        self.depth = depth


class ShardCalls(ScriptRuns):
    """The ingest script calls of one API process: `submit` a request's part for a shard; its future gets
    (totals, outcomes) per event, or QueueFull / StoreUnavailable."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.keys = runtime.keys
        s = runtime.settings
        # Sentinel: answered once a replica holds the call's writes (WAIT); else the plain EVALSHA
        self.script = ReplicatedScript(load_script(runtime.redis, "ingest"), s.wait_replicas, s.redis_wait_timeout)
        shards = self.keys.shards
        # Several shards on one server: the calls of a loop turn go out as one pipeline (api/scriptbatch.py);
        # on a cluster they stay concurrent calls, one per node's shard, and with WAIT (Sentinel fencing) each
        # call keeps its own EVALSHA + WAIT pair.
        self._batcher = ScriptBatcher(runtime.redis, self._plain_script) \
            if shards > 1 and not is_cluster(runtime.redis) and not s.wait_replicas else None
        self.clocks = [RedisClock() for _ in range(shards)]  # shards may sit on nodes with their own clocks
        self._pending: dict[int, list[Pending]] = {}
        # Redis writes the replies of one event-loop turn after running every command of that turn: many
        # scripts in flight at once delay each reply by all of their run times, past REPLY_MARGIN. A few
        # per process and shard keep that delay ~ nodes x one bounded call (a shard's calls carry only its
        # share of the events); requests meanwhile coalesce into the next.
        # With WAIT (Sentinel fencing) a call also waits for a replica's acknowledgement, Redis idle for it
        # meanwhile: twice the calls in flight keep the same script work queued (loadtest/wait_cost.py).
        in_flight = CALLS_IN_FLIGHT * (2 if s.wait_replicas else 1)
        self._in_flight = [asyncio.Semaphore(in_flight) for _ in range(shards)]
        self._calls: set[asyncio.Task[None]] = set()  # strong references: the loop only keeps weak ones
        # What every script call of a shard sends unchanged (ingest.lua's KEYS and constant ARGV), built once
        self._script_keys = [k.ingest_keys() for k in self.keys.all_shards]
        # the soft limit is the whole queue's: each shard's stream takes its share
        self._constants: list[list[bytes | str | int]] = [
            [k.dedup_prefix, s.dedup_ttl, s.dedup_buckets, -(-s.queue_soft_limit // k.shards)]
            for k in self.keys.all_shards]
        # per-project quota and new-group cap (core/ratelimit/quota.py); per-project keys = prefix + id
        self._limits: list[list[bytes | str | int]] = [
            [s.project_quota_per_second, s.project_quota_per_minute, s.project_new_groups_per_hour,
             1 if s.rate_limit_enabled else 0, k.new_groups(""), k.feed_index(""), k.shards]
            for k in self.keys.all_shards]

    def _plain_script(self) -> Any:
        """The script the batcher pipelines: the EVALSHA under ReplicatedScript (no WAIT here), or whatever
        replaced it (tests wrap it to lose replies; the batcher then calls it per call)."""
        return self.script.script if isinstance(self.script, ReplicatedScript) else self.script

    def submit(self, shard: int, pending: Pending) -> None:
        """Joins this loop turn's calls of `shard` (flushed at the end of the turn)."""
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.setdefault(shard, []).append(pending)

    def _flush(self) -> None:
        batches, self._pending = self._pending, {}
        start = time.monotonic()
        for shard, batch in batches.items():  # the shards' calls run concurrently
            task = asyncio.ensure_future(self._run(shard, batch, start))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _run(self, shard: int, batch: list[Pending], start: float) -> None:
        cap = self.runtime.settings.ingest_call_max_events
        chunks: list[list[Pending]] = [[]]
        size = 0
        for p in batch:
            if chunks[-1] and size + p.events > cap:
                chunks.append([])
                size = 0
            chunks[-1].append(p)
            size += p.events
        if len(chunks) == 1:
            await self._settle(shard, chunks[0], start)
            return
        # Sent together (the shard's in-flight bound still applies): one after the other, each later call
        # waited for the round trip of the one before (a busy loop's reply handling included) out of a
        # budget counted from this flush, and a flush of several batches ran its last calls out of time
        # (late-call 503s under `make bench`'s batch case).
        await asyncio.gather(*(self._settle(shard, chunk, start) for chunk in chunks))

    async def _settle(self, shard: int, chunk: list[Pending], start: float) -> None:
        try:
            result = await self._call(shard, chunk, start)
        except BaseException as exc:
            for p in chunk:
                if not p.future.done():
                    p.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        if result[0] == SHED:
            metrics.EVENTS.labels("shed").inc(sum(p.events for p in chunk))
            for p in chunk:
                if not p.future.done():
                    p.future.set_exception(QueueFull(int(result[2])))
            return
        offset, total = 2, sum(p.events for p in chunk)  # {status, redis ms, totals..., outcomes..., limits...}
        decided = 2 + 2 * total
        for p in chunk:
            if p.limit is not None:  # 5 figures per carried limiter check, in chunk order
                p.limit.decide(result[decided:decided + 5])
                decided += 5
            if not p.future.done():  # a request whose client went away still had its events counted
                p.future.set_result((result[offset:offset + p.events],
                                     result[total + offset:total + offset + p.events]))
            offset += p.events
