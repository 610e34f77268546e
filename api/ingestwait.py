"""Which answer settles an ingest call, and how long to wait for one (api/ingestrun.py sends the runs).

The runs of one call share a token, and core/scripts/ingest.lua lets only ONE of them count: a run that finds
an earlier run's entries only reports them (r = -1), whatever its deadline, and no run counts after its own
deadline. So no run is cancelled while another may answer for it, and:
- an answer that counted or reported events (a total > 0 or -1) is final at once, whichever run gave it:
  every other run can only report the same (none counted before it: it would have reported them);
- an answer that counted nothing (late, shed, all duplicates or rate limited), given at Redis time T, proves
  that no run counted before T; a run that executes after T and after its own deadline D counts nothing.
  It is final once every other run that may have been sent has D < T (or answered too).
A local timeout proves nothing: it only ends the wait (api/ingestrun.py then answers 503 "unproven").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The last run's wait (the one a 503 follows) is measured in time the event loop could run: a reply can sit
# unread in the socket of a loop that was starved (a busy process, a GC pause, a descheduled process). Its
# wait is cut in SLICEs; each slice's lateness beyond LAG_MIN (timer jitter) was time no reply could be read,
# and is added to the wait, up to LAG_CAP. A frozen or dead Redis seen by a loop that runs on time still gets
# its 503 at the budget; a starved loop gets it at most LAG_CAP later. (With the default budget, redis-py's
# own read timeout, redis_timeout = 0.5 s after each send, ends the re-run's and the probe's reads about then.)
SLICE = 0.05
LAG_MIN = 0.01
LAG_CAP = 0.25


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


class Slot:
    """A lane's call-in-flight place (api/ingestcall.py), given back when the run answers or when the call
    stops waiting for it: past its deadline a kept-alive run costs Redis at most a refusal, while holding the
    place would stall the re-runs (and new calls) behind it."""

    __slots__ = ("held", "sem")

    def __init__(self, sem: asyncio.Semaphore) -> None:
        self.sem, self.held = sem, False

    async def take(self) -> None:
        await self.sem.acquire()
        self.held = True

    def give_back(self) -> None:
        if self.held:
            self.held = False
            self.sem.release()


@dataclass(slots=True, eq=False)
class Run:
    task: asyncio.Future[list[Any]] | None = None
    deadline: int | None = None  # Redis ms, set just before it is sent: None = never sent, counts nothing
    slot: Slot | None = None  # None: a probe (its deadline is past: it costs Redis a refusal or a report)

    def answer(self) -> list[Any] | None:
        t = self.task
        if t is None or not t.done() or t.cancelled() or t.exception() is not None:
            return None
        return t.result()  # type: ignore[no-any-return]

    def waiting(self) -> bool:
        return self.task is not None and not self.task.done()

    def failed(self) -> BaseException | None:
        t = self.task
        return t.exception() if t is not None and t.done() and not t.cancelled() else None


def final(runs: list[Run], events: int) -> list[Any] | None:
    """The answer that settles the call (see the module's docstring), or None while none does yet."""
    best: list[Any] | None = None
    newest = -1
    for run in runs:
        r = run.answer()
        if r is None:
            continue
        if int(r[0]) == 0 and any(int(x) for x in r[2:2 + events]):
            return r
        newest = max(newest, int(r[1]))
        # all say "nothing counted": the most telling one (0 duplicates / rate limited, then -1 shed, -2 late)
        if best is None or int(r[0]) > int(best[0]):
            best = r
    if best is None:
        return None
    for run in runs:
        if run.answer() is None and (newest <= run.deadline if run.deadline is not None else run.waiting()):
            return None  # unanswered, and sent (or still to be) with a deadline after the answers we have
    return best


async def wait_final(runs: list[Run], events: int, end: float, *, stretch: bool = False,
                     probe_at: float = 0.0, probe: Callable[[], Run] | None = None) -> list[Any] | None:
    """Waits for a final answer until `end` (monotonic); `stretch`: plus the time the loop lost (above). Ends
    early when the newest run fails before a probe is out (a broken connection: the caller may re-run). At
    `probe_at`, if none settled yet, `probe()` adds a run whose deadline is past (it counts nothing: it
    reports an earlier run's events, or answers late at a Redis time after the others' deadlines)."""
    lost, newest = 0.0, runs[-1]
    while True:
        answer = final(runs, events)
        if answer is not None:
            return answer
        now = time.monotonic()
        if probe is not None and now >= probe_at:
            runs.append(probe())
            probe = None
        pending = {r.task for r in runs if r.task is not None and r.waiting()}
        if not pending or (newest is runs[-1] and newest.failed() is not None):  # once a probe is out: wait
            return None
        left = end + min(lost, LAG_CAP) - now
        if left <= 0:
            # a reply read in this loop turn may need a few more turns to reach its task
            for _ in range(3):
                await asyncio.sleep(0)
            return final(runs, events)
        step = min(SLICE if stretch else left, left, probe_at - now if probe is not None else left)
        await asyncio.wait(pending, timeout=max(step, 0.001))
        behind = time.monotonic() - now - step  # > 0: the loop ran late (an answer may have woken it, too)
        if stretch and behind > LAG_MIN:
            lost += behind
