"""One ingest script call and its re-run (api/ingestcall.py makes and coalesces the calls): why a 503 means
"not counted", always.

Every call carries a token and a deadline (Redis clock): the script refuses to count after the deadline, and
only one run of a call counts (a later run that finds its entries only reports them). An unanswered call
(timeout or lost connection after sending) is re-run once with the SAME token and event ids, the first run
still awaited; whichever answer settles the call first is taken (api/ingestwait.py). A 503 is answered only
when no run answered, after every deadline has passed in Redis, so nothing sent can count any more (see
`ScriptRuns._call`). All within ingest_budget, plus at most LAG_CAP when the event loop was starved.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from api.ingestwait import RedisClock, Run, Slot, final, wait_final
from core import metrics
from core.ratelimit.redis_limiter import FoldedHit
from core.redis import transport_glitch
from core.runtime import Runtime
from core.sentinel import follow_primary

SHED, LATE = -1, -2  # script statuses (ingest.lua)
# Time kept between the script's deadline and the moment we stop waiting: covers one bounded script run
# (ingest_call_max_events x ~30 us) plus the reply's way back.
REPLY_MARGIN = 0.2  # measured: with 0.15 a machine at load 18 on 2 cores counted ~4 % of its 503s
RERUN_MIN = 0.15  # time kept for the re-run, whatever the first run took
GRACE = 0.05  # extra wait for a reply already in the socket of a starved event loop (see _call)
PROBE_WAIT = 0.1  # for a probe sent only after a re-run failed at once (a broken connection): one round trip
REFAIL_PAUSE = 0.05  # before re-running a call that failed at once (a failover's closed connections)
LIMITER_AT = 12  # ARGV[13] of ingest.lua (0-based here): how many limiter arguments follow, the re-run flag first
Args = list[bytes | str | int]


class StoreUnavailable(RedisError):
    """No answer from Redis within the budget; nothing of the request was counted (api/errors.py: 503)."""


@dataclass(slots=True)
class Pending:
    args: Args  # PER_EVENT (5) per event
    events: int
    future: asyncio.Future[tuple[list[int], list[int]]]  # (totals, outcomes) per event
    positions: list[int]  # where these events are in the request
    limit: FoldedHit | None = None  # the request's rate-limiter check, decided in the same call
    shard: int = 0  # the key shard of these events (ShardCalls.submit sets it): their section of a call
    start: float = 0.0  # monotonic time it was queued: a call's budget is its oldest request's


class ScriptRuns:
    """The call-and-re-run protocol; ShardCalls (api/ingestcall.py) sets up what it reads."""

    runtime: Runtime
    script: Any
    clocks: list[RedisClock]  # per lane (api/ingestcall.py)
    _in_flight: list[asyncio.Semaphore]

    def _start(self, lane: int, call: tuple[list[bytes], Args, Args], began: float, wait: float, rerun: bool,
               probe: bool = False, slot: Slot | None = None) -> Run:
        """`slot`: the place the call's caller already holds (the first run's), else one is taken."""
        run = Run(slot=None if probe else slot if slot is not None and slot.held else Slot(self._in_flight[lane]))
        run.task = asyncio.ensure_future(self._attempt(lane, run, call, began, wait, rerun, probe))
        return run

    async def _attempt(self, lane: int, run: Run, call: tuple[list[bytes], Args, Args], began: float,
                       wait: float, rerun: bool, probe: bool) -> list[Any]:
        keys, fixed, events = call
        clock = self.clocks[lane]
        if probe:
            deadline = 1  # long past: it counts nothing, it reports an earlier run's events or answers late
        else:
            if clock.offset is None:
                secs, micros = await self.runtime.redis.time()
                clock.observe(secs * 1000 + micros / 1000, time.time())
            offset = clock.offset or 0.0
            deadline = max(1, int((began + wait - REPLY_MARGIN) * 1000 + offset))  # 0 = "none" to the script
        # the limits' and the limiter's arguments follow the deadline (ingest.lua ARGV[9..])
        args = [*fixed, deadline, *events]
        if rerun and args[LIMITER_AT]:  # limiter checks ride in this call: they may find their own entries
            args[LIMITER_AT + 1] = 1
        if run.slot is not None and not run.slot.held:
            await run.slot.take()
        try:
            run.deadline = deadline  # from here on it may reach Redis
            with metrics.timed(metrics.REDIS_SECONDS, "ingest"):
                result = await self.script(keys=keys, args=args)
            clock.observe(float(result[1]), time.time())
            return result  # type: ignore[no-any-return]
        finally:
            if run.slot is not None:
                run.slot.give_back()

    async def _call(self, lane: int, call: tuple[list[bytes], Args, Args], events: int, start: float,
                    slot: Slot | None = None) -> list[int]:
        """One script call (`call` = its keys, its arguments before and after the deadline; `events` in it),
        re-run once with the same token if its answer is late or lost (again while the budget lasts when a
        re-run fails at once on a broken connection: a failover's).

        Why a 503 after this is "not counted": run i may only count before its deadline D_i, and only if no
        other run of the call counted (ingest.lua). No run is cancelled before the end: the first answer that
        settles the call is taken (api/ingestwait.py), a late reply of run 1 too. The re-run starts after
        D_1 (mapped to Redis by a lower bound of the clock offset), so any answer of it covers run 1; at D_2
        a probe (deadline past) goes out, whose answer covers both. We stop waiting at D_2 + REPLY_MARGIN +
        GRACE (+ the time the loop lost, <= LAG_CAP) and answer 503. An answer proves "not counted"; a 503
        without one (no reply at all: Redis frozen or gone, or every reply later than that) is counted in
        faultline_events_total{outcome="unproven"}.
        """
        runs: list[Run] = []
        try:
            return await self._runs(lane, runs, call, events, start, slot)
        finally:  # whatever is still out: its reply no longer matters (a frozen Redis: never hang)
            for run in runs:
                if run.task is not None and not run.task.done():
                    run.task.cancel()
            await asyncio.gather(*(r.task for r in runs if r.task is not None), return_exceptions=True)

    async def _runs(self, lane: int, runs: list[Run], call: tuple[list[bytes], Args, Args], n: int,
                    start: float, slot: Slot | None = None) -> list[int]:
        budget = self.runtime.settings.ingest_budget
        error: BaseException = StoreUnavailable("event store unavailable")
        attempt, probed = 0, False

        def probe() -> Run:
            nonlocal probed
            probed = True
            return self._start(lane, call, 0.0, 0.0, True, probe=True)

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
            began, at = time.time(), time.monotonic()  # the deadline is counted from here, like the wait
            run = self._start(lane, call, began, wait, attempt > 0, slot=slot if attempt == 0 else None)
            runs.append(run)
            # A re-run's wait is the last: a probe once its deadline has passed in Redis (the clock's offset is
            # a lower bound: Redis is past D by then), and the time the loop lost added (api/ingestwait.py)
            answer = await wait_final(runs, n, at + wait + GRACE, stretch=attempt > 0,
                                      probe_at=at + wait - REPLY_MARGIN + 0.005, probe=probe if attempt else None)
            if run.deadline is None and run.task is not None:  # still waiting for its place: never sent
                run.task.cancel()
            elif run.slot is not None:
                run.slot.give_back()  # still awaited from here, for its reply only
            if answer is not None:
                if int(answer[0]) != LATE:
                    return [int(x) for x in answer]
                error = StoreUnavailable("event store too slow (call refused after its deadline)")
                if attempt >= 1:
                    break  # every run answered late or is covered by one that did: nothing counted
                attempt += 1
                continue
            exc = run.failed()
            # failed at once on a broken connection (no wait for its deadline); RuntimeError / AttributeError:
            # redis-py writing to a transport a failover just closed
            refused = isinstance(exc, RedisError | OSError | RuntimeError) or transport_glitch(exc)
            error = exc if refused and exc is not None else TimeoutError(f"no reply within {wait + GRACE:.2f}s")
            # Not answered: maybe never sent, maybe ran. The re-run (same token) tells which.
            metrics.EVENTS.labels("ambiguous" if attempt == 0 else "unavailable").inc(n)
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
        if not probed and any(r.deadline is not None and r.answer() is None for r in runs):
            # ended on a re-run that failed at once while an earlier run may still answer or have counted
            answer = await wait_final(runs, n, time.monotonic() + PROBE_WAIT, stretch=True, probe=probe)
            if answer is not None and int(answer[0]) != LATE:
                return [int(x) for x in answer]
        if final(runs, n) is None and any(r.deadline is not None for r in runs):
            metrics.EVENTS.labels("unproven").inc(n)
        raise StoreUnavailable(f"event store unavailable: {error}") from error
