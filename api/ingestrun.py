"""One ingest script call and its re-run (api/ingestcall.py makes and coalesces the calls): why a 503 means
"not counted", always.

Every call carries a token and a deadline (Redis clock): the script refuses to count after the deadline, and an
unanswered call (timeout or lost connection after sending) is re-run once with the SAME token and event ids;
the re-run finds what the lost run wrote and reports those events as accepted. Only when the re-run gets no
answer either does the request get a 503, after both deadlines have passed in Redis, so nothing sent later can
count (see `ScriptRuns._call`). All within ingest_budget.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from core import metrics
from core.dedup import TOKEN_BITS
from core.ratelimit.redis_limiter import FoldedHit
from core.redis import transport_glitch
from core.runtime import Runtime
from core.sentinel import follow_primary
from core.tasks import message_frame

SHED, LATE = -1, -2  # script statuses (ingest.lua)
# Time kept between the script's deadline and the moment we stop waiting: covers one bounded script run
# (ingest_call_max_events x ~30 us) plus the reply's way back.
REPLY_MARGIN = 0.2  # measured: with 0.15 a machine at load 18 on 2 cores counted ~4 % of its 503s
RERUN_MIN = 0.15  # time kept for the re-run, whatever the first run took
GRACE = 0.05  # extra wait for a reply already in the socket of a starved event loop (see _call)
REFAIL_PAUSE = 0.05  # before re-running a call that failed at once (a failover's closed connections)
LIMITER_AT = 12  # ARGV[13] of ingest.lua (0-based here): how many limiter arguments follow, the re-run flag first


class StoreUnavailable(RedisError):
    """No answer from Redis within the budget; nothing of the request was counted (api/errors.py: 503)."""


@dataclass(slots=True)
class Pending:
    args: list[bytes | str | int]  # PER_EVENT (5) per event
    events: int
    future: asyncio.Future[tuple[list[int], list[int]]]  # (totals, outcomes) per event
    positions: list[int]  # where these events are in the request
    limit: FoldedHit | None = None  # the request's rate-limiter check, decided in the same call
    shard: int = 0  # the key shard of these events (ShardCalls.submit sets it): their section of a call


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


class ScriptRuns:
    """The call-and-re-run protocol; ShardCalls (api/ingestcall.py) sets up what it reads."""

    runtime: Runtime
    script: Any
    clocks: list[RedisClock]  # per lane (api/ingestcall.py)
    _in_flight: list[asyncio.Semaphore]
    _script_keys: list[list[bytes]]  # per shard
    _section_heads: list[list[bytes | str | int]]  # per shard
    _constants: list[bytes | str | int]
    _limits: list[bytes | str | int]

    async def _attempt(self, lane: int, keys: list[bytes], fixed: list[bytes | str | int],
                       events: list[bytes | str | int], began: float, wait: float, rerun: bool) -> list[Any]:
        clock = self.clocks[lane]
        if clock.offset is None:
            secs, micros = await self.runtime.redis.time()
            clock.observe(secs * 1000 + micros / 1000, time.time())
        offset = clock.offset or 0.0
        deadline = max(1, int((began + wait - REPLY_MARGIN) * 1000 + offset))  # 0 = "none" to the script
        args = [*fixed, deadline, *events]
        if rerun and args[LIMITER_AT]:  # limiter checks ride in this call: they may find their own entries
            args[LIMITER_AT + 1] = 1
        async with self._in_flight[lane]:
            with metrics.timed(metrics.REDIS_SECONDS, "ingest"):
                return await self.script(keys=keys, args=args)  # type: ignore[no-any-return]

    async def _call(self, lane: int, sections: dict[int, list[Pending]], chunk: list[Pending],
                    start: float) -> list[int]:
        """One script call (a section per shard of `sections`; `chunk` = their requests in that order), re-run
        once with the same token if its answer is lost (again while the budget lasts when a re-run fails at
        once on a broken connection: a failover's).

        Why a 503 after this is "not counted": run i may only count before its deadline D_i, and we stop
        waiting for it at D_i + REPLY_MARGIN + GRACE (local clock, mapped to Redis by a lower bound of the offset).
        The re-run starts after D_1, so run 1 can no longer count anything the re-run does not see; we
        answer 503 only after D_2 too. If any run answers, its answer covers both runs (same token).
        """
        budget = self.runtime.settings.ingest_budget
        head, tail = message_frame()
        token = secrets.randbelow((1 << TOKEN_BITS) - 1) + 1
        fixed: list[bytes | str | int] = [*self._constants, head, tail, token]
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
        events: list[bytes | str | int] = [*self._limits, len(checks), *checks]
        keys: list[bytes] = []
        for shard, part in sections.items():  # ingest.lua's sections: keys, prefixes, event count, events
            keys += self._script_keys[shard]
            events += self._section_heads[shard]
            events.append(sum(p.events for p in part))
            events.extend(a for p in part for a in p.args)
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
            run = asyncio.ensure_future(self._attempt(lane, keys, fixed, events, began, wait, attempt > 0))
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
                self.clocks[lane].observe(float(result[1]), time.time())
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
