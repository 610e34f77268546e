"""Transactions the server rolls back, against real MariaDB (one server; the Galera cluster has its own tests):
a real deadlock (1213) between the count sync and another connection is run again and the batch counted
once; a COMMIT whose answer was lost is run again and the ledger makes the second run a no-op."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from core import metrics
from core.db import repo
from core.db.engine import make_engine
from core.db.migrate import migrate
from core.db.models import AppliedBatch, ErrorGroup
from core.db.rerun import rerun_transaction
from core.settings import Settings
from workers.sync import _apply

A, B = "a" * 64, "b" * 64


@pytest.fixture
async def settings(make_settings: Any, mariadb_url: str) -> Settings:
    s = make_settings(database_url=mariadb_url, db_rerun_base_delay=0.05, db_rerun_max_delay=0.2)
    await migrate(s)
    engine = make_engine(s)
    async with engine.begin() as conn:  # both groups exist: the sync's upsert then locks existing rows
        await repo.apply_count_batch(conn, "seed", {A: 1, B: 1})
    await engine.dispose()
    return s


def reruns(op: str, reason: str) -> float:
    return metrics.DB_RERUNS.labels(op, reason)._value.get()


async def counts(settings: Settings) -> dict[str, int]:
    engine = make_engine(settings)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(ErrorGroup.fingerprint, ErrorGroup.count))
            ledger = (await conn.execute(select(func.count()).select_from(AppliedBatch))).scalar_one()
        return {**{fp: int(n) for fp, n in rows}, "ledger rows": int(ledger)}
    finally:
        await engine.dispose()


async def test_a_real_deadlock_in_the_count_sync_is_run_again_and_counted_once(settings: Settings) -> None:
    engine = make_engine(settings)
    before = reruns("apply_counts", "1213")
    async with engine.connect() as other:
        # the other transaction writes many rows first (InnoDB rolls back the lighter one of a deadlock: the
        # sync), then holds B's lock
        await other.execute(text("INSERT INTO applied_batches (batch_id, applied_at, events) VALUES "
                                 + ",".join(f"('heavy-{i}', 0, 0)" for i in range(200))))
        await other.execute(text("UPDATE error_groups SET count = count + 10 WHERE fingerprint = :fp"), {"fp": B})
        # the sync locks A (rows in key order), then waits for B...
        sync = asyncio.create_task(rerun_transaction("apply_counts", lambda: _apply(engine, "batch-1", {A: 2, B: 3}),
                                                     settings))
        await asyncio.sleep(0.5)
        # ...and the other now asks for A: a cycle, which InnoDB breaks with 1213 for the sync
        await other.execute(text("UPDATE error_groups SET count = count + 10 WHERE fingerprint = :fp"), {"fp": A})
        await other.execute(text("DELETE FROM applied_batches WHERE batch_id LIKE 'heavy-%'"))
        await other.commit()
        assert await asyncio.wait_for(sync, 30) is True
    await engine.dispose()
    assert reruns("apply_counts", "1213") == before + 1  # the deadlock was seen, and run again once
    # the rolled-back first run left nothing: the batch counted exactly once, one ledger row for it
    assert await counts(settings) == {A: 1 + 10 + 2, B: 1 + 10 + 3, "ledger rows": 2}


async def test_a_commit_whose_answer_was_lost_is_run_again_and_the_ledger_skips_it(settings: Settings) -> None:
    engine = make_engine(settings)
    runs: list[bool] = []

    async def apply_then_lose_the_answer() -> bool:
        applied = await _apply(engine, "batch-2", {A: 5})
        runs.append(applied)
        if len(runs) == 1:  # committed, but the client never heard back (the node died after the commit)
            raise OperationalError("COMMIT", {}, Exception(2013, "Lost connection to server during query"))
        return applied

    assert await rerun_transaction("apply_counts", apply_then_lose_the_answer, settings) is False
    await engine.dispose()
    assert runs == [True, False]  # the second run found the ledger row
    assert await counts(settings) == {A: 1 + 5, B: 1, "ledger rows": 2}


async def test_sqlite_read_then_write_waits_for_another_process_write_instead_of_failing(make_settings: Any) -> None:
    """Two engines on one SQLite file (two processes, as the stack and `faultline project create` are): a
    `begin()` transaction that reads, then writes, while the other commits a write in between. A deferred
    BEGIN fails that write at once with "database is locked" (SQLITE_BUSY_SNAPSHOT, busy_timeout not
    consulted); `begin()` takes the write lock first, so the other waits for it and both commit."""
    s = make_settings()
    await migrate(s)
    ours, theirs = make_engine(s), make_engine(s)

    async def their_write() -> None:
        async with theirs.begin() as conn:
            await repo.apply_count_batch(conn, "theirs", {B: 1})

    try:
        async with ours.begin() as conn:
            assert await conn.scalar(select(func.count()).select_from(ErrorGroup)) == 0
            other = asyncio.create_task(their_write())
            await asyncio.sleep(0.5)  # with a deferred BEGIN, their write commits here, under our read
            await repo.apply_count_batch(conn, "ours", {A: 1})
        await asyncio.wait_for(other, 30)
        async with ours.connect() as conn:
            rows = dict((await conn.execute(select(ErrorGroup.fingerprint, ErrorGroup.count))).all())
    finally:
        await ours.dispose()
        await theirs.dispose()
    assert rows == {A: 1, B: 1}
