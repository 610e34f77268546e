"""Move counts from Redis to the DB, exactly once.

Ingest adds 1 per accepted event to a pending hash in the same atomic script that enqueues it. A sync
renames that hash aside under a new batch id (atomic: ingest goes on counting into a fresh hash), then adds
the deltas in ONE transaction together with a ledger row for the batch id. A crash before the commit leaves
the batch in Redis and the next sync applies it; a crash after the commit but before the clean-up makes the
next sync find the ledger row and skip it. So every event is counted once, whoever crashes when.
A call sent twice (redis-py re-sends one whose connection dropped before the reply, as in a failover) is
safe: flush_start.lua keeps the batch its first run made.

Each key shard (core/keys.py) has its own pending hash and batches. On Redis Cluster a sync runs the recipe on
every shard concurrently, a transaction each (batch ids are unique, so one ledger serves them all). On one
server (or Sentinel) with several shards, every shard's batches are renamed aside as above, then applied in
ONE transaction (a ledger row per batch, one upsert of their summed deltas): 16 shards were 16 transactions
and commits per interval, 64 ms of MariaDB CPU per sync of 2,000 groups against 30 ms with one shard (now
32-34 ms; issue 12 must-show 6). Exactly once as before: the ledger rows and the deltas commit together or
not at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from functools import partial

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from core import metrics
from core.counts import split_deltas
from core.db import repo
from core.db.rerun import rerun_transaction
from core.keys import Keys
from core.redis import as_str, is_cluster, load_script
from core.sentinel import ReplicatedScript
from core.settings import Settings

log = logging.getLogger("faultline.sync")


async def sync_counts(redis: Redis, engine: AsyncEngine, keys: Keys, settings: Settings | None = None) -> int:
    """Apply every pending count batch of every shard; returns how many events were added to DB counts.
    `settings`: the rerun policy of a transaction the server rolled back (core/db/rerun.py; its defaults
    without them)."""
    start = time.perf_counter()
    if keys.shards > 1 and not is_cluster(redis):
        added = await _sync_together(redis, engine, keys, settings)
    else:
        # every shard's sync ends before this returns, even when one fails: a retry must not run beside the
        # previous run's other shards (seen in a failover: one batch applied by both, 10 ms apart)
        results = await asyncio.gather(*(_sync_shard(redis, engine, shard, settings) for shard in keys.all_shards),
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        added = sum(r for r in results if isinstance(r, int))
    metrics.SYNC_SECONDS.observe(time.perf_counter() - start)
    metrics.SYNCED_EVENTS.inc(added)
    return added


async def _start(redis: Redis, keys: Keys, settings: Settings | None) -> list[str]:
    """Rename the shard's pending hash aside under a new batch id; returns every unapplied batch id."""
    batch_id = uuid.uuid4().hex
    # Applied only once replicas hold the rename, as ingest's writes (Sentinel: wait_replicas 1): a rename the
    # old primary ran but never passed on would leave the deltas pending on the new one, applied again there.
    # NotReplicated: nothing applied; the next sync finds this batch in the set (or the deltas still pending).
    flush_start = ReplicatedScript(load_script(redis, "flush_start"), settings.wait_replicas if settings else 0,
                                   settings.redis_wait_timeout if settings else 0.1)
    batches = await flush_start(
        keys=[keys.pending_counts, keys.flushing_batches, keys.flushing(batch_id), keys.sync_generation],
        args=[batch_id])
    return [as_str(b) for b in batches]


async def _sync_together(redis: Redis, engine: AsyncEngine, keys: Keys, settings: Settings | None) -> int:
    """One server, several shards: every shard's batches in ONE transaction (module docstring)."""
    # every rename ends before this applies or raises (a retry never runs beside this run's renames)
    started = await asyncio.gather(*(_start(redis, shard, settings) for shard in keys.all_shards),
                                   return_exceptions=True)
    for r in started:
        if isinstance(r, BaseException):
            raise r
    batches = [(shard, bid) for shard, ids in zip(keys.all_shards, started, strict=True)
               if isinstance(ids, list) for bid in ids]
    if not batches:
        return 0
    pipe = redis.pipeline(transaction=False)
    for shard, bid in batches:
        pipe.hgetall(shard.flushing(bid))
    parts: list[repo.CountBatch] = [(bid, *split_deltas(raw))
                                    for (_, bid), raw in zip(batches, await pipe.execute(), strict=True)]
    with metrics.timed(metrics.DB_SECONDS, "apply_counts"):
        applied = await rerun_transaction("apply_counts", partial(_apply_many, engine, parts), settings)
    pipe = redis.pipeline(transaction=False)
    for shard, bid in batches:
        pipe.delete(shard.flushing(bid))
        pipe.srem(shard.flushing_batches, bid)
    await pipe.execute()
    added = 0
    for (bid, deltas, _), done in zip(parts, applied, strict=True):
        if done:
            added += sum(deltas.values())
        else:
            log.warning("count batch %s was already applied; skipped", bid)
    log.info("count sync: %d events in %d batches over %d shards", added, len(parts), keys.shards)
    return added


async def _apply_many(engine: AsyncEngine, parts: list[repo.CountBatch]) -> list[bool]:
    async with engine.begin() as conn:
        return await repo.apply_count_batches(conn, parts)


async def _sync_shard(redis: Redis, engine: AsyncEngine, keys: Keys, settings: Settings | None) -> int:
    batches = await _start(redis, keys, settings)
    added = 0
    for raw_id in batches:
        bid = as_str(raw_id)
        deltas, hours = split_deltas(await redis.hgetall(keys.flushing(bid)))  # type: ignore[misc]
        with metrics.timed(metrics.DB_SECONDS, "apply_counts"):
            applied = await rerun_transaction("apply_counts", partial(_apply, engine, bid, deltas, hours),
                                              settings)
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


async def _apply(engine: AsyncEngine, batch_id: str, deltas: dict[str, int],
                 hours: Mapping[tuple[int, str, int], int] | None = None) -> bool:
    """The ledger row, the deltas and their hour buckets in ONE transaction: a rerun after a rollback
    (conflict, lost node) finds either nothing of it (applies it) or, if the lost COMMIT had landed, the
    ledger row (skips it)."""
    async with engine.begin() as conn:
        return await repo.apply_count_batch(conn, batch_id, deltas, hours)


async def housekeeping(engine: AsyncEngine, hourly_days: int = 14) -> None:
    """Keep the count ledger to one week and hour buckets to `hourly_days` (bounded chunks: no long lock on
    MariaDB); samples and groups: workers/retention.py."""
    async with engine.begin() as conn:
        await repo.prune_batches(conn, time.time() - 7 * 86_400)
    oldest_hour = int(time.time() // 3600) - hourly_days * 24
    while True:
        async with engine.begin() as conn:
            if await repo.prune_hours(conn, oldest_hour) < repo.PRUNE_CHUNK:
                break


async def prune_consumers(redis: Redis, keys: Keys, idle_ms: int = 3_600_000) -> int:
    """Forget stream consumers (one per worker process ever started) idle for an hour with nothing pending."""
    removed = 0
    for shard in keys.streams:  # every stream workers read (the global tag's too when sharded)
        try:
            consumers = await redis.xinfo_consumers(shard.stream, shard.consumer_group)
        except Exception:
            continue
        for c in consumers:
            if int(c.get("pending", 0)) == 0 and int(c.get("idle", 0)) > idle_ms:
                await redis.xgroup_delconsumer(shard.stream, shard.consumer_group, c["name"])
                removed += 1
    return removed
