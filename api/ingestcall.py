"""The ingest script calls of an API process (api/ingest.py makes their arguments): coalesced per loop turn,
bounded in flight; each call and its re-run follow api/ingestrun.py, where a 503 means "not counted".

Requests share script calls and queued tasks (group commit): a request joins its lane's queue, and a call
takes everything queued (whole requests, up to ingest_call_max_events, so it stays short and a request is
counted all or none) at the moment it gets one of the lane's CALLS_IN_FLIGHT places. Requests of one
event-loop turn thus share a call at no latency cost (the flush runs later in the same turn), and requests
that arrive while every place is taken share the next one: the slower Redis answers, the more each call
carries. A batch fixed at its loop turn would instead queue for a place as its own call: at ~1,000 req/s
over 3 nodes (one request per turn) a round trip slowed to ~8 ms by a busy CPU lets 2 places carry ~250
calls/s per node, fewer than arrive, and the queue grew until the calls' deadlines refused them: the soaks'
stalls of 0.6-1 s on every node at once (`python -m loadtest.wrkload soak --duration 300`, back to back:
before, 1,662 x 503 and nginx p99 69 -> 840 ms first -> last third; after, 0 x 503 and 71 -> 70 ms).

Lanes: a call carries one section per key shard it touches (core/scripts/ingest.lua). On Redis Cluster a
script's keys must share a slot, so each shard is its own lane (one single-slot call per shard, concurrent).
On one server (redis://, Sentinel) every shard shares lane 0: ONE call per loop turn carries every shard's
events, so TIME, the deadline and queue checks, the dedup meta reads and the task's XADD are paid once per
call, not once per shard (issue 12 must-show 6: 16 shards on one server cost ~+30 % CPU per event with a
call per shard, even pipelined).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any

from api.ingestrun import SHED, Args, Pending, ScriptRuns, StoreUnavailable
from api.ingestwait import RedisClock, Slot
from core import deduphome, metrics
from core.dedup import TOKEN_BITS
from core.redis import PackedScript, is_cluster, load_script
from core.runtime import Runtime
from core.sentinel import ReplicatedScript
from core.tasks import message_frame

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
        script = load_script(runtime.redis, "ingest")
        # Sentinel with fencing: answered once a replica holds the call's writes (WAIT); a cluster: the plain
        # EVALSHA to the keys' slot; else one EVALSHA packed by core/rawpipeline.py (a call carries ~70
        # arguments + 14 per key-shard section: redis-py's packer cost ~0.6 us each, ~4 us per event on 16
        # shards' section keys; packed keys are cached)
        self.script: ReplicatedScript | PackedScript = (
            ReplicatedScript(script, s.wait_replicas, s.redis_wait_timeout)
            if s.wait_replicas or is_cluster(runtime.redis) else PackedScript(runtime.redis, script))
        shards = self.keys.shards
        # one lane per shard on a cluster (single-slot calls), one lane for every shard on one server
        self.one_lane = shards == 1 or not is_cluster(runtime.redis)
        lanes = 1 if self.one_lane else shards
        self.clocks = [RedisClock() for _ in range(lanes)]  # a cluster's nodes may have clocks of their own
        self._queued: dict[int, deque[Pending]] = {}  # lane -> requests waiting for a call
        self._queued_events: dict[int, int] = {}  # lane -> events in them
        self._callers: dict[int, int] = {}  # lane -> callers waiting for a place (each takes up to a call's cap)
        self._scheduled = False
        # Redis writes the replies of one event-loop turn after running every command of that turn: many
        # scripts in flight at once delay each reply by all of their run times, past REPLY_MARGIN. A few
        # per process and shard keep that delay ~ nodes x one bounded call (a shard's calls carry only its
        # share of the events); requests meanwhile coalesce into the next.
        # With WAIT (Sentinel fencing) a call also waits for a replica's acknowledgement, Redis idle for it
        # meanwhile: twice the calls in flight keep the same script work queued (loadtest/wait_cost.py).
        in_flight = CALLS_IN_FLIGHT * (2 if s.wait_replicas else 1)
        self._in_flight = [asyncio.Semaphore(in_flight) for _ in range(lanes)]
        self._calls: set[asyncio.Task[None]] = set()  # strong references: the loop only keeps weak ones
        # What every script call sends unchanged (ingest.lua's KEYS and ARGV), built once: per shard its
        # section's keys and prefixes (per-project keys = prefix + id)
        # (bytes: redis-py's encoder passes them through; a 16-shard call carries ~4 sections' 13 of them)
        # dedup layout and quota keys: the global tag's for every shard on one server (core/deduphome.py)
        self.legacy = deduphome.Legacy(runtime.redis, self.keys)
        self._script_keys, self._section_heads, self._legacy_heads = deduphome.ingest_sections(runtime.redis, self.keys)
        # the soft limit is the whole queue's: each shard's stream takes its share (a call's task goes to the
        # stream of its first section, the shard of its first event: tasks spread as the events do)
        self._constants: list[bytes | str | int] = [s.dedup_ttl, s.dedup_buckets, -(-s.queue_soft_limit // shards)]
        # per-project quota and new-group cap (core/ratelimit/quota.py): on a cluster each shard admits its
        # share; on one server the shards share one state, which admits the whole limit
        self._limits: list[bytes | str | int] = [
            s.project_quota_per_second, s.project_quota_per_minute, s.project_new_groups_per_hour,
            1 if s.rate_limit_enabled else 0, 1 if deduphome.shared(runtime.redis, self.keys) else shards]

    def submit(self, shard: int, pending: Pending) -> None:
        """Queues a request's part for `shard`'s lane; a call takes it once it holds a place (after this loop
        turn at the earliest). Its future gets (totals, outcomes) per event, or QueueFull / StoreUnavailable."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        pending.shard = shard
        pending.start = time.monotonic()
        lane = 0 if self.one_lane else shard
        self._queued.setdefault(lane, deque()).append(pending)
        self._queued_events[lane] = self._queued_events.get(lane, 0) + pending.events

    def _flush(self) -> None:
        self._scheduled = False
        if self.legacy.due():  # in the background: until it answers, calls keep reading the old layout
            self._spawn(self._check_legacy())
        cap = self.runtime.settings.ingest_call_max_events
        for lane, events in self._queued_events.items():
            # a caller per `cap` queued events (each takes up to that many): the calls of a big flush go out
            # together; whole requests may pack worse, which _caller's own check covers
            self._add_callers(lane, -(-events // cap))

    def _add_callers(self, lane: int, wanted: int) -> None:
        for _ in range(wanted - self._callers.get(lane, 0)):
            self._callers[lane] = self._callers.get(lane, 0) + 1
            self._spawn(self._caller(lane))

    def _take(self, lane: int) -> list[Pending]:
        """Whole requests from the head of the lane's queue, up to ingest_call_max_events (at least one)."""
        cap = self.runtime.settings.ingest_call_max_events
        queue = self._queued.get(lane)
        batch: list[Pending] = []
        size = 0
        while queue and (not batch or size + queue[0].events <= cap):
            p = queue.popleft()
            batch.append(p)
            size += p.events
        if size:
            self._queued_events[lane] -= size
        return batch

    async def _caller(self, lane: int) -> None:
        slot = Slot(self._in_flight[lane])
        try:
            await slot.take()
        except BaseException:  # cancelled (shutdown): no request may be left waiting for ever
            self._callers[lane] -= 1
            if not self._callers[lane]:
                self._fail(self._take_all(lane), StoreUnavailable("ingest call cancelled"))
            raise
        self._callers[lane] -= 1
        try:
            batch = self._take(lane)
            if self._queued.get(lane):  # left over (requests are taken whole): never without a caller
                self._add_callers(lane, 1)
            if batch:  # the budget of the call is its oldest request's (the queue is in arrival order)
                await self._settle(lane, batch, batch[0].start, slot)
        finally:
            slot.give_back()

    def _take_all(self, lane: int) -> list[Pending]:
        batch = list(self._queued.pop(lane, ()))
        self._queued_events.pop(lane, None)
        return batch

    @staticmethod
    def _fail(batch: list[Pending], exc: BaseException) -> None:
        for p in batch:
            if not p.future.done():
                p.future.set_exception(exc)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _check_legacy(self) -> None:
        with contextlib.suppress(Exception):  # Redis failing: the last answer stands, asked again in a minute
            await self.legacy.refresh()

    async def _settle(self, lane: int, batch: list[Pending], start: float, slot: Slot) -> None:
        # a section per shard, the first one the shard of the first request's events (its stream gets the
        # task); the events and the answers follow this order
        sections: dict[int, list[Pending]] = {}
        for p in batch:
            sections.setdefault(p.shard, []).append(p)
        chunk = [p for part in sections.values() for p in part]
        try:
            call, n = self._arguments(sections, chunk)
            result = await self._call(lane, call, n, start, slot)
        except BaseException as exc:
            self._fail(chunk, exc)
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

    def _arguments(self, sections: dict[int, list[Pending]],
                   chunk: list[Pending]) -> tuple[tuple[list[bytes], Args, Args], int]:
        """ingest.lua's KEYS, its ARGV before and after the deadline (api/ingestrun.py adds that), events."""
        head, tail = message_frame()
        token = secrets.randbelow((1 << TOKEN_BITS) - 1) + 1
        fixed: Args = [*self._constants, head, tail, token]
        # the limiter checks carried by the chunk's requests (ingest.lua ARGV[16..]): each names its events
        # Compact: each tier set once per call, then ONE argument per request ("spec|first|count|member|client"):
        # with a window key, limit and window per tier and request, packing the arguments in redis-py cost
        # more than the limiter's own Python (py-spy, limiter on).
        specs: dict[int, int] = {}
        spec_args: Args = []
        checks: Args = []
        first = 1
        for p in chunk:
            hit = p.limit
            if hit is not None:
                hit.sent = True
                index = specs.get(id(hit.spec))
                if index is None:
                    index = specs[id(hit.spec)] = len(specs) + 1
                    spec_args += hit.spec
                checks.append(f"{index}|{first}|{p.events}|{hit.member}|{hit.client}")
            first += p.events
        if checks:  # led by the re-run flag (ARGV[17]), which _attempt sets on a re-run, and the tier sets
            checks = [0, len(specs), *spec_args, *checks]
        events: Args = [*self._limits, len(checks), *checks]
        keys: list[bytes] = []
        heads = self._legacy_heads if self.legacy.known else self._section_heads
        for shard, part in sections.items():  # ingest.lua's sections: keys, prefixes, event count, events
            keys += self._script_keys[shard]
            events += heads[shard]
            events.append(sum(p.events for p in part))
            events.extend(a for p in part for a in p.args)
        return (keys, fixed, events), first - 1
