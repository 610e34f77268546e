"""The hot path: validated events -> fingerprint -> Redis script calls (dedup, count, enqueue).

No SQL here. The script (core/scripts/ingest.lua) also sheds load when the queue passes its soft limit.

A 503 means "not counted", always. Every call carries a token and a deadline (Redis clock): the script
refuses to count after the deadline, and an unanswered call (timeout or lost connection after sending) is
re-run once with the SAME token and event ids; the re-run finds what the lost run wrote and reports those
events as accepted. Only when the re-run gets no answer either does the request get a 503, after both
deadlines have passed in Redis, so nothing sent later can count (see `_call`). All within ingest_budget.

Key shards (core/keys.py): an event goes to the shard of its fingerprint, and the script runs once per shard
(each call single-slot, as Redis Cluster requires); the shards of one flush are called concurrently. A
request whose events span shards is counted all-or-none per shard: if one shard's call fails the request
gets its 503 while the other shards' events stay counted, so a client resending with the same event ids
(the SDKs do; nginx's retry keeps the edge id, from which missing ids are derived) has each counted once.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import RedisError

from api.scriptbatch import ScriptBatcher
from core import metrics
from core.dedup import TOKEN_BITS, dedup_id
from core.events import LogErrorIn, new_event_id
from core.fingerprint import client_fingerprint, default_fingerprint
from core.ratelimit.limiter import Decision
from core.ratelimit.quota import overflow_fingerprint
from core.ratelimit.redis_limiter import FoldedHit
from core.redis import ReplicatedScript, is_cluster, load_script, transport_glitch
from core.runtime import Runtime
from core.sentinel import follow_primary
from core.tasks import message_frame

SHED, LATE = -1, -2  # script statuses (ingest.lua)
EARLIER = -1  # per-event: counted by a lost earlier run of the same call
# Time kept between the script's deadline and the moment we stop waiting: covers one bounded script run
# (ingest_call_max_events x ~30 us) plus the reply's way back.
REPLY_MARGIN = 0.2  # measured: with 0.15 a machine at load 18 on 2 cores counted ~4 % of its 503s
CALLS_IN_FLIGHT = 2
RERUN_MIN = 0.15  # time kept for the re-run, whatever the first run took
GRACE = 0.05  # extra wait for a reply already in the socket of a starved event loop (see _call)
ACCEPTED, DUPLICATE = metrics.EVENTS.labels("accepted"), metrics.EVENTS.labels("duplicate")  # once per request
REFAIL_PAUSE = 0.05  # before re-running a call that failed at once (a failover's closed connections)
LIMITER_AT = 15  # ARGV[16] of ingest.lua (0-based here): how many limiter arguments follow, the re-run flag first


@dataclass(slots=True)
class Accepted:
    event_id: str
    fingerprint: str
    duplicate: bool
    first_seen: bool  # the first event of its group Redis has seen
    # > 0: NOT counted, the project's quota is used up; one more event fits in this many ms
    rate_limited_ms: int = 0
    overflow: bool = False  # counted into the project's "too many new groups" group (fingerprint is its)

    @property
    def counted(self) -> bool:
        return not self.duplicate and not self.rate_limited_ms


class QueueFull(Exception):
    def __init__(self, depth: int) -> None:
        super().__init__(f"queue depth {depth}")
        self.depth = depth


class RateLimited(Exception):
    """The request rate limiter, folded into the ingest call, refused the request: nothing was counted."""

    def __init__(self, decision: Decision) -> None:
        super().__init__("rate limited")
        self.decision = decision


class StoreUnavailable(RedisError):
    """No answer from Redis within the budget; nothing of the request was counted (api/errors.py: 503)."""


def derived_event_id(edge_id: str, index: int) -> str:
    return hashlib.blake2b(f"{edge_id}:{index}".encode(), digest_size=16).hexdigest()


def fingerprint_of(project_id: int, item: LogErrorIn) -> str:
    if item.fingerprint:
        return client_fingerprint(project_id, item.fingerprint)
    return default_fingerprint(project_id, item.service, item.message, item.stack)


@dataclass(slots=True)
class _Pending:
    args: list[bytes | str | int]  # PER_EVENT (5) per event
    events: int
    future: asyncio.Future[tuple[list[int], list[int]]]  # (totals, outcomes) per event
    positions: list[int]  # where these events are in the request
    limit: FoldedHit | None = None  # the request's rate-limiter check, decided in the same call


class RedisClock:
    """A lower bound of (Redis time - local time) in ms: deadlines computed with it fall no later in
    Redis than meant. Each reply gives one (script start <= reply time); the max over the last 10-20 s
    is the tightest, and forgets an old sample if the local clock is stepped."""

    def __init__(self) -> None:
        self.current: float | None = None
        self.previous: float | None = None
        self.rotated = time.monotonic()

    def observe(self, redis_ms: float, local_after: float) -> None:
        sample = redis_ms - local_after * 1000
        if time.monotonic() - self.rotated > 10:
            self.previous, self.current, self.rotated = self.current, None, time.monotonic()
        self.current = sample if self.current is None else max(self.current, sample)

    @property
    def offset(self) -> float | None:
        known = [v for v in (self.current, self.previous) if v is not None]
        return max(known) if known else None


class Ingestor:
    """Requests that arrive in the same event-loop turn share script calls and queued tasks.

    Under load a node has tens of requests in flight; coalescing them costs no latency (the flush runs
    later in the same loop turn) and turns N Redis round trips + N worker tasks into a few. A call holds
    whole requests up to ingest_call_max_events, so it stays short and a request is counted all or none;
    the calls of one flush go out together, at most CALLS_IN_FLIGHT at a time per shard.
    """

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
        self._pending: dict[int, list[_Pending]] = {}
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

    async def ingest(self, project_id: int, items: list[LogErrorIn], edge_id: str | None = None,
                     limit: FoldedHit | None = None) -> list[Accepted]:
        """`edge_id`: the load balancer's id of this request, the same when it retries the request on
        another node; events without an event_id get one derived from it, so a retry counts nothing twice.
        `limit`: the request's rate-limiter check (one key shard only, api/ratelimit.py), decided in the same
        script call before anything is counted; RateLimited when it refuses."""
        now = time.time()
        by_shard: dict[int, tuple[list[bytes | str | int], list[int]]] = {}
        out: list[Accepted] = []
        for index, item in enumerate(items):
            if index and index % 100 == 0:
                await asyncio.sleep(0)  # a 1,000-event batch must not hold the loop (health probes, others)
            event_id = item.event_id or (derived_event_id(edge_id, index) if edge_id else new_event_id())
            fp = fingerprint_of(project_id, item)
            event = {"event_id": event_id, "project_id": project_id, "fingerprint": fp, "received_at": now,
                     "message": item.message, "level": item.level, "service": item.service}
            if item.stack is not None:
                event["stack"] = item.stack
            if item.context is not None:
                event["context"] = item.context
            args, positions = by_shard.setdefault(self.keys.shard_of(fp), ([], []))
            args += dedup_id(project_id, event_id)  # seed, digest
            args.append(fp)
            args.append(orjson.dumps(event))
            args.append(project_id)  # the script's quota and new-group cap are per project
            positions.append(index)
            out.append(Accepted(event_id, fp, False, False))
        loop = asyncio.get_running_loop()
        parts = []
        if limit is not None and len(by_shard) != 1:
            raise ValueError("a folded limiter check needs the request on one key shard")
        for shard, (args, positions) in by_shard.items():
            pending = _Pending(args, len(positions), loop.create_future(), positions, limit)
            if not self._pending:
                loop.call_soon(self._flush)
            self._pending.setdefault(shard, []).append(pending)
            parts.append(pending)
        totals, outcomes = [0] * len(out), [0] * len(out)
        # every shard's answer is awaited (none is left unretrieved) before a failure is raised
        results: list[Any]
        if len(parts) == 1:  # the common case (one key shard): no gather machinery per request
            try:
                results = [await parts[0].future]
            except Exception as exc:
                results = [exc]
        else:
            results = await asyncio.gather(*(p.future for p in parts), return_exceptions=True)
        for p, result in zip(parts, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            for pos, total, outcome in zip(p.positions, *result, strict=True):
                totals[pos], outcomes[pos] = total, outcome
        if limit is not None and limit.decision is not None and not limit.decision.allowed:
            raise RateLimited(limit.decision)
        for acc, total, outcome in zip(out, totals, outcomes, strict=True):
            acc.first_seen = total == 1
            if outcome < 0:  # over the project's quota: dropped, counted per project by the script
                acc.rate_limited_ms = -outcome
            else:
                acc.duplicate = total == 0
                if outcome == 1:
                    acc.overflow = True
                    acc.fingerprint = overflow_fingerprint(project_id)
        dup = sum(a.duplicate for a in out)
        limited = sum(a.rate_limited_ms > 0 for a in out)
        ACCEPTED.inc(len(out) - dup - limited)
        if dup:
            DUPLICATE.inc(dup)
        if limited:
            metrics.EVENTS_DROPPED.labels("rate_limited").inc(limited)
        return out

    def _flush(self) -> None:
        batches, self._pending = self._pending, {}
        start = time.monotonic()
        for shard, batch in batches.items():  # the shards' calls run concurrently
            task = asyncio.ensure_future(self._run(shard, batch, start))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _run(self, shard: int, batch: list[_Pending], start: float) -> None:
        cap = self.runtime.settings.ingest_call_max_events
        chunks: list[list[_Pending]] = [[]]
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

    async def _settle(self, shard: int, chunk: list[_Pending], start: float) -> None:
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

    async def _attempt(self, shard: int, keys: list[str], fixed: list[bytes | str | int],
                       events: list[bytes | str | int], began: float, wait: float, rerun: bool) -> list[Any]:
        clock = self.clocks[shard]
        if clock.offset is None:
            secs, micros = await self.runtime.redis.time()
            clock.observe(secs * 1000 + micros / 1000, time.time())
        offset = clock.offset or 0.0
        deadline = max(1, int((began + wait - REPLY_MARGIN) * 1000 + offset))  # 0 = "none" to the script
        args = [*fixed, deadline, *events]
        if rerun and args[LIMITER_AT]:  # limiter checks ride in this call: they may find their own entries
            args[LIMITER_AT + 1] = 1
        async with self._in_flight[shard]:
            with metrics.timed(metrics.REDIS_SECONDS, "ingest"):
                if self._batcher is not None:
                    return await self._batcher(keys, args)  # type: ignore[no-any-return]
                return await self.script(keys=keys, args=args)  # type: ignore[no-any-return]

    async def _call(self, shard: int, chunk: list[_Pending], start: float) -> list[int]:
        """One script call, re-run once with the same token if its answer is lost (again while the budget
        lasts when a re-run fails at once on a broken connection: a failover's).

        Why a 503 after this is "not counted": run i may only count before its deadline D_i, and we stop
        waiting for it at D_i + REPLY_MARGIN + GRACE (local clock, mapped to Redis by a lower bound of the offset).
        The re-run starts after D_1, so run 1 can no longer count anything the re-run does not see; we
        answer 503 only after D_2 too. If any run answers, its answer covers both runs (same token).
        """
        budget = self.runtime.settings.ingest_budget
        head, tail = message_frame()
        token = secrets.randbelow((1 << TOKEN_BITS) - 1) + 1
        fixed: list[bytes | str | int] = [*self._constants[shard], head, tail, token]
        # the limiter checks carried by the chunk's requests (ingest.lua ARGV[16..]): each names its events
        # Compact: each tier set once per call, then ONE argument per request ("spec|first|count|member|client"):
        # with a window key, limit and window per tier and request, packing the arguments in redis-py cost
        # more than the limiter's own Python (py-spy, limiter on).
        specs: dict[int, int] = {}
        spec_args: list[bytes | str | int] = []
        checks: list[bytes | str | int] = []
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
        events: list[bytes | str | int] = [*self._limits[shard], len(checks), *checks,
                                           *(a for p in chunk for a in p.args)]
        error: BaseException = StoreUnavailable("event store unavailable")
        attempt = 0
        while True:
            remaining = start + budget - time.monotonic()
            if attempt == 0:
                # send only with room for a re-run after it: otherwise not sent, so certainly not counted
                wait = min(budget / 2, remaining - RERUN_MIN) - GRACE
                if wait <= REPLY_MARGIN + 0.01:
                    break
            else:
                # the re-run always goes out: with little time left its deadline is already past, so it
                # counts nothing new but still tells whether the first run counted (it answers "mine")
                wait = max(RERUN_MIN, remaining) - GRACE
            began = time.time()  # the deadline is counted from here, like the wait
            # the limits' and the limiter's arguments follow the deadline (ingest.lua ARGV[9..])
            run = asyncio.ensure_future(self._attempt(shard, self._script_keys[shard], fixed, events, began, wait,
                                                      attempt > 0))
            await asyncio.wait({run}, timeout=wait)
            if not run.done():
                # A starved event loop (busy machine) wakes up with the reply in its socket AND the timer
                # due: give the reply GRACE, and a few loop turns, to be read before calling the call lost.
                await asyncio.wait({run}, timeout=GRACE)
                for _ in range(3):
                    if run.done():
                        break
                    await asyncio.sleep(0)
            refused = False  # the call failed at once on a broken connection (no wait for its deadline)
            if not run.done():
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
                error = TimeoutError(f"no reply within {wait + GRACE:.2f}s")
            elif isinstance(run.exception(), RedisError | OSError | RuntimeError) or transport_glitch(run.exception()):
                # RuntimeError / AttributeError: redis-py writing to a transport a failover just closed
                error = run.exception()  # type: ignore[assignment]
                refused = True
            else:
                result = run.result()
                self.clocks[shard].observe(float(result[1]), time.time())
                if int(result[0]) != LATE:
                    return [int(x) for x in result]
                error = StoreUnavailable("event store too slow (call refused after its deadline)")
                if attempt >= 1:
                    break
                attempt += 1
                continue
            # Not answered: maybe never sent, maybe ran. The re-run (same token) tells which.
            metrics.EVENTS.labels("ambiguous" if attempt == 0 else "unavailable").inc(sum(p.events for p in chunk))
            attempt += 1
            # A failover (Redis Cluster, Sentinel) breaks the pooled connections to the old primary: every
            # call on one fails at once, while the client learns the new primary within milliseconds. Such
            # a fast failure leaves budget: pause a moment and re-run again (same token, so whichever runs
            # counted, the next one reports it), as long as a whole re-run still fits in the budget.
            if attempt >= 2 and not (refused and start + budget - time.monotonic() > RERUN_MIN + REFAIL_PAUSE):
                break
            if refused:
                await follow_primary(self.runtime.redis)  # Sentinel: a failover moved the primary?
                await asyncio.sleep(REFAIL_PAUSE)
        raise StoreUnavailable(f"event store unavailable: {error}") from error
