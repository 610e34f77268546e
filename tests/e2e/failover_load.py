"""Fixed-rate ingest load for the Redis failover tests (Cluster and Sentinel), with every answer timed.

A batch of `batch` events leaves every `batch / rate` seconds whatever the previous ones are doing (a slow
answer during a failover does not slow the offered load down, as it would with a closed loop). Each batch
is sent as an SDK does: a 5xx or a transport error is sent again with the SAME event ids until answered 202
(the server deduplicates by id). Every attempt is kept with its send and answer times (monotonic), so a
test places the 5xx relative to the moment it failed a node over, instead of sleeping and hoping.

"Lost" (what the tests assert is zero): an event answered 202 that the DB does not count in the end.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from sqlalchemy import select

from core.db.engine import make_engine
from core.db.models import ErrorGroup
from core.fingerprint import client_fingerprint
from faultline.stack import Stack
from tests.waiting import wait_for


@dataclass
class Attempt:
    sent: float  # time.monotonic() when the request left
    answered: float
    status: int  # 0: transport error (no HTTP answer)


@dataclass
class FailoverLoad:
    url: str
    key: str
    rate: float = 100.0  # events per second
    batch: int = 10
    groups: int = 40
    attempts: list[Attempt] = field(default_factory=list)
    accepted: dict[str, str] = field(default_factory=dict)  # event id -> group name, once answered 202
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _flights: set[asyncio.Task[None]] = field(default_factory=set)

    def names(self) -> list[str]:
        return [f"fo-{self.run}-{i}" for i in range(self.groups)]

    async def run_for(self, seconds: float) -> None:
        """Offer the load for `seconds`, then wait for every batch to be answered 202 (the re-sends)."""
        names = self.names()
        period = self.batch / self.rate
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout, headers={"X-Faultline-Key": self.key}) as session:
            start = time.monotonic()
            i = 0
            while time.monotonic() - start < seconds:
                events = [{"message": f"failover {self.run} {i + j}", "fingerprint": names[(i + j) % len(names)],
                           "event_id": uuid.uuid4().hex} for j in range(self.batch)]
                i += self.batch
                task = asyncio.create_task(self._deliver(session, events))
                self._flights.add(task)
                task.add_done_callback(self._flights.discard)
                # the next batch leaves on the schedule, not after this one's answer
                await asyncio.sleep(max(0.0, start + (i / self.batch) * period - time.monotonic()))
            await asyncio.gather(*self._flights)

    async def _deliver(self, session: aiohttp.ClientSession, events: list[dict[str, Any]]) -> None:
        for _ in range(200):  # up to ~40 s of re-sends: far beyond any failover these tests cause
            sent = time.monotonic()
            pause = 0.2
            try:
                async with session.post(f"{self.url}/errors/batch", json={"events": events}) as r:
                    status = r.status
                    await r.read()
                    # as SDKs do: wait what the 503 asks (1 s), so a failover does not turn into a retry storm
                    pause = min(2.0, float(r.headers.get("Retry-After", pause)))
            except (TimeoutError, aiohttp.ClientError):
                status = 0
            self.attempts.append(Attempt(sent, time.monotonic(), status))
            if status == 202:
                self.accepted.update((e["event_id"], e["fingerprint"]) for e in events)
                return
            assert status in (0, 500, 502, 503, 504), f"unexpected status {status}"
            await asyncio.sleep(pause)
        raise AssertionError("a batch still refused after 200 tries")

    def errors(self) -> list[Attempt]:
        return [a for a in self.attempts if a.status != 202]

    def expected(self, project_id: int = 1) -> Counter[str]:
        """DB fingerprint -> events accepted (each event id once)."""
        return Counter(client_fingerprint(project_id, name) for name in self.accepted.values())

    def summary(self, origin: float) -> str:
        errs = self.errors()
        shown = errs if len(errs) <= 12 else [*errs[:6], *errs[-6:]]
        when = ", ".join(f"{a.sent - origin:+.2f}s->{a.answered - origin:+.2f}s:{a.status}" for a in shown)
        return (f"{len(self.attempts)} requests, {len(self.accepted)} events accepted, {len(errs)} non-202"
                f" {dict(Counter(a.status for a in errs))} (sent->answered relative to the fault: {when}"
                f"{' (first and last 6)' if len(errs) > 12 else ''})")


async def db_counts(stack: Stack, fps: list[str]) -> dict[str, int]:
    engine = make_engine(stack.settings())
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(ErrorGroup.fingerprint, ErrorGroup.count)
                                      .where(ErrorGroup.fingerprint.in_(fps)))
            return {r[0]: int(r[1]) for r in rows}
    finally:
        await engine.dispose()


async def settled_counts(stack: Stack, load: FailoverLoad, timeout: float = 60) -> Counter[str]:
    """Wait until the DB counts every accepted event (each id once: lost 0, nothing doubled) and return
    those counts; on failure, say which groups differ."""
    expected = load.expected()

    async def db_exact() -> bool:
        return await db_counts(stack, list(expected)) == dict(expected)
    try:
        await wait_for(db_exact, timeout, "DB counts equal to every accepted event")
    except AssertionError:
        got = await db_counts(stack, list(expected))
        short = {fp: (n, got.get(fp, 0)) for fp, n in expected.items() if got.get(fp, 0) != n}
        lost = sum(max(0, n - got.get(fp, 0)) for fp, n in expected.items())
        raise AssertionError(f"{lost} accepted events not counted; (accepted, DB) differ for {len(short)} "
                             f"groups: {list(short.items())[:5]}") from None
    return expected

