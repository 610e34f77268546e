"""Idempotent writes on SQLite and MariaDB: each can run twice and change nothing more."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from core.db import repo
from core.db.engine import make_engine
from core.db.migrate import migrate
from core.db.models import ErrorGroup, GroupHour, Sample
from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings
from workers import retention
from workers.sync import prune_consumers, sync_counts


@pytest.fixture
async def settings(make_settings: Any, db_url: str) -> Settings:
    s = make_settings(database_url=db_url)
    await migrate(s)
    return s


def group(fp: str, t: float, message: str = "m") -> dict[str, Any]:
    return {"fingerprint": fp, "project_id": 1, "message": message, "error_type": "E", "service": "s",
            "level": "error", "first_seen": t, "last_seen": t}


async def test_count_batch_applies_once_and_placeholder_is_filled(settings: Settings) -> None:
    engine = make_engine(settings)
    fp = "a" * 64
    async with engine.begin() as conn:
        assert await repo.apply_count_batch(conn, "b1", {fp: 3})
    async with engine.begin() as conn:
        assert not await repo.apply_count_batch(conn, "b1", {fp: 3})  # replay: no-op
    async with engine.begin() as conn:
        await repo.upsert_groups(conn, [group(fp, 200.0, "first message")])
        await repo.upsert_groups(conn, [group(fp, 100.0, "later message"), group("b" * 64, 50.0)])
        await repo.upsert_groups(conn, [group(fp, 300.0, "third")])
    async with engine.connect() as conn:
        row = (await conn.execute(select(ErrorGroup.__table__).where(ErrorGroup.fingerprint == fp))).one()
    await engine.dispose()
    assert row.count == 3  # the worker's upserts never touch the count
    assert row.message == "first message"  # filled once, then kept
    assert (row.first_seen, row.last_seen) == (100.0, 300.0)


async def test_count_batches_sum_into_groups_and_hours_and_create_placeholders(settings: Settings) -> None:
    """The sync's upserts (core/db/bulk.py add_counts/add_hours, fixed SQL text): several batches in one
    transaction add up per group and per (project, group, hour); a new group becomes a count-only placeholder
    with the schema's defaults; an applied batch adds nothing."""
    engine = make_engine(settings)
    fps = [f"{i:064x}" for i in range(300)]
    async with engine.begin() as conn:  # one existing group with details and a count
        await repo.upsert_groups(conn, [group(fps[0], 1.0)])
        assert await repo.apply_count_batch(conn, "b0", {fps[0]: 5}, {(1, fps[0], 7): 5})
    batches: list[repo.CountBatch] = [
        ("b1", {fp: 1 for fp in fps}, {(1, fp, 7): 1 for fp in fps}),
        ("b2", {fps[0]: 2, fps[1]: 3, fps[2]: 0}, {(1, fps[0], 7): 2, (1, fps[0], 8): 4, (2, fps[1], 7): 3}),
        ("b0", {fps[0]: 100}, {(1, fps[0], 7): 100}),  # applied before: nothing
    ]
    async with engine.begin() as conn:
        assert await repo.apply_count_batches(conn, batches) == [True, True, False]
    async with engine.connect() as conn:
        counts = dict((await conn.execute(select(ErrorGroup.fingerprint, ErrorGroup.count))).all())
        hours = {(p, fp, h): n for p, fp, h, n in await conn.execute(
            select(GroupHour.project_id, GroupHour.fingerprint, GroupHour.hour, GroupHour.count))}
        placeholder = (await conn.execute(select(ErrorGroup.state, ErrorGroup.regressed, ErrorGroup.message)
                                          .where(ErrorGroup.fingerprint == fps[5]))).one()
    await engine.dispose()
    assert counts == {fps[0]: 5 + 1 + 2, fps[1]: 1 + 3, **{fp: 1 for fp in fps[2:]}}
    assert hours == {(1, fps[0], 7): 5 + 1 + 2, (1, fps[0], 8): 4, (2, fps[1], 7): 3,
                     **{(1, fp, 7): 1 for fp in fps[1:]}}
    assert tuple(placeholder) == ("unresolved", False, None)


async def test_sync_survives_a_crash_between_rename_and_commit(settings: Settings) -> None:
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    engine = make_engine(settings)
    # a sync that crashed after moving the pending hash aside: the batch is left in the flushing set
    await redis.hset(keys.flushing("crashed"), mapping={"c" * 64: 4})
    await redis.sadd(keys.flushing_batches, "crashed")
    await redis.hset(keys.pending_counts, mapping={"c" * 64: 1, "d" * 64: 2})
    assert await sync_counts(redis, engine, keys) == 7
    # and one that crashed after its commit but before clean-up: the ledger makes the retry a no-op
    await redis.hset(keys.flushing("crashed"), mapping={"c" * 64: 4})
    await redis.sadd(keys.flushing_batches, "crashed")
    assert await sync_counts(redis, engine, keys) == 0
    async with engine.connect() as conn:
        counts = dict((await conn.execute(select(ErrorGroup.fingerprint, ErrorGroup.count))).all())
    assert counts == {"c" * 64: 5, "d" * 64: 2}
    assert not await redis.exists(keys.flushing_batches)
    await redis.aclose()
    await engine.dispose()


async def test_prune_keeps_the_newest_samples_of_each_group(settings: Settings) -> None:
    engine = make_engine(settings)
    redis = make_redis(settings, timeout=5)
    rows = [{"event_id": f"{g}{i:031d}", "fingerprint": g * 64, "received_at": time.time() + i, "payload": "{}"}
            for g in "ef" for i in range(8)]
    async with engine.begin() as conn:
        await repo.insert_samples(conn, rows)
        await repo.insert_samples(conn, rows)  # redelivery: ignored
    assert await retention.cap_samples(engine, redis, Keys.from_settings(settings), keep=3) == 10
    await redis.aclose()
    async with engine.connect() as conn:
        kept = (await conn.execute(select(Sample.fingerprint, func.count()).group_by(Sample.fingerprint))).all()
        ids = set((await conn.execute(select(Sample.event_id))).scalars())
    await engine.dispose()
    assert dict(kept) == {"e" * 64: 3, "f" * 64: 3}
    assert ids == {f"{g}{i:031d}" for g in "ef" for i in (5, 6, 7)}


async def test_idle_consumers_are_forgotten(make_settings: Any) -> None:
    settings = make_settings()
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    await redis.xgroup_create(keys.stream, keys.consumer_group, id="0", mkstream=True)
    await redis.xgroup_createconsumer(keys.stream, keys.consumer_group, "gone")
    assert await prune_consumers(redis, keys, idle_ms=3_600_000) == 0
    await asyncio.sleep(0.05)
    assert await prune_consumers(redis, keys, idle_ms=10) == 1
    assert await redis.xinfo_consumers(keys.stream, keys.consumer_group) == []
    await redis.aclose()


async def test_written_values_round_trip_whatever_their_characters(settings: Settings) -> None:
    """The writer's statements are SQL text filled by the driver (core/db/bulk.py): quotes, percent signs,
    backslashes and non-ASCII text must arrive exactly as sent, in a batch of many rows as in a batch of one."""
    engine = make_engine(settings)
    odd = "it's 100% \\ \"quoted\" %s %(x)s -- é 漢 🚀 \n\r\t\x1a"
    rows = [{"event_id": f"{i:032d}", "fingerprint": "9" * 64, "received_at": 10.0 + i,
             "payload": f'{{"message": "{odd} {i}"}}'} for i in range(3)]
    async with engine.begin() as conn:
        await repo.upsert_groups(conn, [group("9" * 64, 10.0, odd), group("8" * 64, 11.0, odd[:1])])
        await repo.insert_samples(conn, rows[:1])
        await repo.insert_samples(conn, rows)
    async with engine.connect() as conn:
        messages = dict((await conn.execute(select(ErrorGroup.fingerprint, ErrorGroup.message))).all())
        payloads = dict((await conn.execute(select(Sample.event_id, Sample.payload))).all())
    await engine.dispose()
    assert messages == {"9" * 64: odd, "8" * 64: odd[:1]}
    assert payloads == {r["event_id"]: r["payload"] for r in rows}


async def test_the_cap_trims_a_hot_group_in_full_in_one_run(settings: Settings) -> None:
    """A hot group gathers thousands of samples between two runs of the cap: one run leaves it at `keep`
    (it used to delete one chunk of 1,000 per group and run, so the table grew for as long as ingest did)."""
    engine = make_engine(settings)
    redis = make_redis(settings, timeout=5)
    now = time.time()
    n = retention.CHUNK * 2 + 500
    rows = [{"event_id": f"{i:032d}", "fingerprint": "7" * 64, "received_at": now - n + i, "payload": "{}"}
            for i in range(n)]
    async with engine.begin() as conn:
        await repo.insert_samples(conn, rows)
    assert await retention.cap_samples(engine, redis, Keys.from_settings(settings), keep=5) == n - 5
    await redis.aclose()
    async with engine.connect() as conn:
        ids = set((await conn.execute(select(Sample.event_id))).scalars())
    await engine.dispose()
    assert ids == {f"{i:032d}" for i in range(n - 5, n)}  # the newest five
