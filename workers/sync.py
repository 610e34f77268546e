"""Move counts from Redis to the DB, exactly once.

Ingest adds 1 per accepted event to a pending hash in the same atomic script that enqueues it. A sync
renames that hash aside under a new batch id (atomic: ingest goes on counting into a fresh hash), then adds
the deltas in ONE transaction together with a ledger row for the batch id. A crash before the commit leaves
the batch in Redis and the next sync applies it; a crash after the commit but before the clean-up makes the
next sync find the ledger row and skip it. So every event is counted once, whoever crashes when.

Each key shard (core/keys.py) has its own pending hash and batches; a sync runs the same recipe on every
shard, concurrently (batch ids are unique, so one ledger serves them all).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from core import metrics
from core.db import repo
from core.keys import Keys
from core.redis import as_str, load_script

log = logging.getLogger("faultline.sync")


async def sync_counts(redis: Redis, engine: AsyncEngine, keys: Keys) -> int:
    """Apply every pending count batch of every shard; returns how many events were added to DB counts."""
    start = time.perf_counter()
    added = sum(await asyncio.gather(*(_sync_shard(redis, engine, shard) for shard in keys.all_shards)))
    metrics.SYNC_SECONDS.observe(time.perf_counter() - start)
    metrics.SYNCED_EVENTS.inc(added)
    return added


async def _sync_shard(redis: Redis, engine: AsyncEngine, keys: Keys) -> int:
    batch_id = uuid.uuid4().hex
    flush_start = load_script(redis, "flush_start")
    batches = await flush_start(
        keys=[keys.pending_counts, keys.flushing_batches, keys.flushing(batch_id), keys.sync_generation],
        args=[batch_id])
    added = 0
    for raw_id in batches:
        bid = as_str(raw_id)
        raw = await redis.hgetall(keys.flushing(bid))
        deltas = {as_str(fp): int(n) for fp, n in raw.items()}
        with metrics.timed(metrics.DB_SECONDS, "apply_counts"):
            async with engine.begin() as conn:
                applied = await repo.apply_count_batch(conn, bid, deltas)
        pipe = redis.pipeline(transaction=False)
        pipe.delete(keys.flushing(bid))
        pipe.srem(keys.flushing_batches, bid)
        await pipe.execute()
        if applied:
            n = sum(deltas.values())
            added += n
            log.info("count batch %s: %d events over %d groups", bid, n, len(deltas))
        else:
            log.warning("count batch %s was already applied; skipped", bid)
    return added


async def housekeeping(engine: AsyncEngine, samples_per_group: int) -> None:
    """Keep the samples table to the last few per group and the ledger to one week."""
    async with engine.begin() as conn:
        await repo.prune_samples(conn, samples_per_group)
        await repo.prune_batches(conn, time.time() - 7 * 86_400)


async def prune_consumers(redis: Redis, keys: Keys, idle_ms: int = 3_600_000) -> int:
    """Forget stream consumers (one per worker process ever started) idle for an hour with nothing pending."""
    removed = 0
    for shard in keys.all_shards:
        try:
            consumers = await redis.xinfo_consumers(shard.stream, shard.consumer_group)
        except Exception:
            continue
        for c in consumers:
            if int(c.get("pending", 0)) == 0 and int(c.get("idle", 0)) > idle_ms:
                await redis.xgroup_delconsumer(shard.stream, shard.consumer_group, c["name"])
                removed += 1
    return removed
