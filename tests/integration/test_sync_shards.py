"""workers/sync.py with several key shards on ONE server: every shard's batches applied in one transaction,
exactly once (a batch a crash left behind, already in the ledger, is skipped; an unapplied one is applied),
the overflow group counted in two shards summed. Real redis-server, SQLite and MariaDB."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from core.db.engine import make_engine
from core.db.migrate import migrate
from core.db.models import AppliedBatch, ErrorGroup
from core.db.repo import apply_count_batch
from core.keys import Keys
from core.redis import make_redis
from workers import sync
from workers.sync import sync_counts

SHARDS = 8


async def test_every_shard_in_one_transaction_exactly_once(make_settings: Any, db_url: str) -> None:
    settings = make_settings(redis_shards=SHARDS, database_url=db_url)
    await migrate(settings)
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    engine = make_engine(settings)
    transactions = 0
    apply_many = sync._apply_many

    async def counting(*args: Any) -> Any:
        nonlocal transactions
        transactions += 1
        return await apply_many(*args)

    sync._apply_many = counting  # type: ignore[assignment]
    try:
        fps = [f"fp-{i}" for i in range(40)]
        used = {keys.shard_of(fp) for fp in fps}
        assert len(used) == SHARDS
        for fp in fps:
            await redis.hincrby(keys.for_fingerprint(fp).pending_counts, fp, 3)  # type: ignore[misc]
        # one group counted in two shards (a project's overflow group: counted in each event's shard)
        for shard in (keys.shard(0), keys.shard(1)):
            await redis.hincrby(shard.pending_counts, "overflow", 2)  # type: ignore[misc]
        # left behind by a crash in shard 2: batch "old" applied and committed, not cleaned up ...
        await redis.hset(keys.shard(2).flushing("old"), "fp-x", 100)  # type: ignore[misc]
        await redis.sadd(keys.shard(2).flushing_batches, "old")  # type: ignore[misc]
        async with engine.begin() as conn:
            assert await apply_count_batch(conn, "old", {"fp-x": 100})
        # ... and batch "lost" in shard 3, renamed aside but never applied
        await redis.hset(keys.shard(3).flushing("lost"), "fp-y", 7)  # type: ignore[misc]
        await redis.sadd(keys.shard(3).flushing_batches, "lost")  # type: ignore[misc]

        assert await sync_counts(redis, engine, keys, settings) == 40 * 3 + 2 * 2 + 7
        assert transactions == 1
        async with engine.connect() as conn:
            counts = dict((await conn.execute(select(ErrorGroup.fingerprint, ErrorGroup.count))).all())
            ledger = (await conn.execute(select(func.count()).select_from(AppliedBatch))).scalar()
        assert counts == {**dict.fromkeys(fps, 3), "overflow": 4, "fp-x": 100, "fp-y": 7}
        assert ledger == 1 + 1 + SHARDS  # "old", "lost", and one new batch per shard
        for shard in keys.all_shards:  # nothing left pending or flushing
            assert not await redis.exists(shard.pending_counts, shard.flushing_batches)
        assert await sync_counts(redis, engine, keys, settings) == 0  # nothing to do: no transaction
        assert transactions == 1
    finally:
        sync._apply_many = apply_many  # type: ignore[assignment]
        await redis.aclose()
        await engine.dispose()
