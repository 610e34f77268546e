"""The batch writer isolates rows the DB refuses for good (bisection) and fails everything on an outage.

A fake DB (unit test): write() refuses any batch holding a "bad" event, or every batch while "down".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy.exc import DataError, OperationalError

from core.dedup import SUCCEEDED, DedupId, dedup_id
from core.events import Event
from core.retry import RowsRejected
from core.settings import Settings
from workers.writer import BatchWriter


def ev(i: int, bad: bool = False) -> Event:
    return Event(event_id=f"e{i}", project_id=1, fingerprint=f"fp{i % 3}", received_at=time.time(),
                 message="bad" if bad else "ok")


class FakeDBWriter(BatchWriter):
    def __init__(self, down: bool = False) -> None:
        super().__init__(Settings(write_batch_delay=0.05), engine=None, redis=None)  # type: ignore[arg-type]
        self.down = down
        self.stored: list[str] = []
        self.calls = 0

    async def write(self, events: Sequence[Event]) -> None:
        self.calls += 1
        if self.down:
            raise OperationalError("INSERT", {}, Exception(2003, "Can't connect to MySQL server"))
        if any(e.message == "bad" for e in events):
            raise DataError("INSERT", {}, Exception(1406, "Data too long for column 'service' at row 1"))
        self.stored += [e.event_id for e in events]


async def run(writer: FakeDBWriter, tasks: list[list[Event]]) -> list[BaseException | None]:
    writer.start()
    try:
        results = await asyncio.gather(*(writer.submit(t) for t in tasks), return_exceptions=True)
    finally:
        await writer.stop()
    return [r if isinstance(r, BaseException) else None for r in results]


async def test_only_refused_rows_fail_and_their_batch_mates_are_stored() -> None:
    w = FakeDBWriter()
    tasks = [[ev(i) for i in range(0, 40)] + [ev(40, bad=True)] + [ev(i) for i in range(41, 64)],
             [ev(100), ev(101, bad=True), ev(102), ev(103, bad=True)],
             [ev(i) for i in range(200, 230)]]
    results = await run(w, tasks)
    assert isinstance(results[0], RowsRejected) and results[0].event_ids == ["e40"]
    assert isinstance(results[1], RowsRejected) and sorted(results[1].event_ids) == ["e101", "e103"]
    assert "1406" in str(results[0]) and "Data too long" in str(results[0])
    assert results[2] is None
    good = {e.event_id for t in tasks for e in t if e.message == "ok"}
    assert set(w.stored) == good and len(w.stored) == len(good)  # each good row written once
    assert w.calls < 40  # bisection, not row by row: ~2*log2(n) writes per bad row


async def test_one_hand_over_of_many_tasks_gives_each_its_own_outcome() -> None:
    """workers/persist.py hands a whole read over at once: one future, one outcome per task, in order."""
    w = FakeDBWriter()
    w.start()
    try:
        outcomes = await w.enqueue([([ev(1)], 1), ([ev(2, bad=True), ev(3)], 1), ([], 1), ([ev(4)], 2)])
    finally:
        await w.stop()
    assert outcomes[0] is None and outcomes[2] is None and outcomes[3] is None
    assert isinstance(outcomes[1], RowsRejected) and outcomes[1].event_ids == ["e2"]
    assert sorted(w.stored) == ["e1", "e3", "e4"]
    assert w.jobs.attempts == {}  # a retried task's attempt number is forgotten once it is settled


async def test_a_db_outage_fails_every_task_as_transient_and_stores_nothing() -> None:
    w = FakeDBWriter(down=True)
    results = await run(w, [[ev(1), ev(2)], [ev(3, bad=True)]])
    assert all(isinstance(r, OperationalError) for r in results)
    assert w.stored == [] and w.outage.failing  # logged as one outage, not as bad rows


@pytest.mark.parametrize("attempt", [1, 3])
async def test_the_job_record_keeps_the_attempt_number(attempt: int) -> None:
    """A retried success keeps the attempt count core/retry.py kept, in the event's detail record (a first
    attempt needs none: the compact state code says "succeeded" and GET /jobs reports 1 attempt)."""
    class Pipe:
        def __init__(self, sink: list[Any]) -> None:
            self.sink = sink

        def set(self, key: str, value: bytes, **_: Any) -> None:
            self.sink.append((key, value))

        async def execute(self) -> None:
            return None

    class Redis:
        def __init__(self) -> None:
            self.values: list[tuple[str, bytes]] = []

        def pipeline(self, transaction: bool = False) -> Pipe:
            return Pipe(self.values)

    class States:
        def __init__(self) -> None:
            self.calls: list[tuple[dict[int, list[DedupId]], int]] = []

        async def set(self, hashed: dict[int, list[DedupId]], code: int) -> int:
            self.calls.append((hashed, code))
            return sum(len(ids) for ids in hashed.values())

    w = FakeDBWriter()
    redis, states = Redis(), States()
    w.jobs.redis = redis  # type: ignore[assignment]
    w.jobs.states = states  # type: ignore[assignment]
    e = ev(7)
    w.jobs.remember([e.event_id], attempt)
    hashed = {0: [dedup_id(e.project_id, e.event_id)]}  # the writer hashes a batch's ids once for both states
    await w.jobs.set([(e.project_id, e.event_id, e.fingerprint)], hashed, SUCCEEDED)
    assert states.calls == [(hashed, SUCCEEDED)]
    if attempt == 1:
        assert redis.values == []
    else:
        assert redis.values == [(w.keys.event_detail(e.project_id, e.event_id),
                                 f'{{"state":"succeeded","attempts":{attempt},"last_error":null}}'.encode())]
