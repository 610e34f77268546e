"""Retention: what the DB keeps, and how it is deleted without hurting anyone.

The numbers: samples older than FAULTLINE_SAMPLE_RETENTION_DAYS (30) and groups idle longer than
FAULTLINE_GROUP_RETENTION_DAYS (90) go; a group keeps its newest FAULTLINE_SAMPLES_PER_GROUP (5) samples;
alert delivery attempts are kept DELIVERY_RETENTION_DAYS. The scheduler runs this every
FAULTLINE_RETENTION_INTERVAL (300 s), one replica per run (Redis lock); the per-group cap (cap_samples) also
every FAULTLINE_SAMPLE_CAP_INTERVAL (30 s), trimming each group to its newest samples in full.

How: rows are chosen by time through an index (samples.received_at, error_groups.last_seen,
alert_deliveries.created_at), oldest first, CHUNK at a time, and deleted by primary key in a transaction of
their own: each transaction locks at most CHUNK rows for milliseconds, never a range (no gap locks across
an id range that a worker is inserting into), and is the same on every Galera node. A run stops after
RUN_MAX rows per table, so one run is bounded; between chunks it pauses twice as long as the chunk took (at
least PAUSE), so pruning holds the DB (and its CPU) at most a third of the time whatever its speed: a busy or
slow DB slows the pruning, not the workers. 100,000 rows at ~15 ms per chunk: ~5 s per run.
A deleted group's DELETE re-checks last_seen, so a group that got an event meanwhile stays; its Redis state
(live totals, feed summary, feed index) is dropped after the DB commit (live_prune.lua, forced), unless it
is being counted again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import Table, delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db.models import AlertDelivery, ErrorGroup, Sample
from core.keys import Keys
from core.redis import load_script
from core.settings import Settings

log = logging.getLogger("faultline.retention")
CHUNK = 1000  # rows per DELETE transaction: ~10 ms on MariaDB, far below any lock wait timeout
RUN_MAX = 100_000  # rows per table per run: a backlog (first run on an old DB) is worked off over several runs
PAUSE = 0.01  # s between chunks at least; after a slow chunk, twice as long as it took (_yield_db)
CAP_GROUPS = 500  # groups whose sample count is checked per query of the per-group cap
CAP_SCAN = 20_000  # groups the per-group cap looks at per run
CAP_LOOKBACK = 600.0  # s: the cap looks at groups with samples received since its last run minus this
DELIVERY_RETENTION_DAYS = 14.0
DAY = 86_400.0
_samples: Table = Sample.__table__  # type: ignore[assignment]
_groups: Table = ErrorGroup.__table__  # type: ignore[assignment]
_deliveries: Table = AlertDelivery.__table__  # type: ignore[assignment]


@dataclass
class Pruned:
    samples: int = 0
    capped: int = 0
    groups: int = 0
    deliveries: int = 0


async def _yield_db(began: float) -> None:
    """Pause twice as long as the chunk since `began` took, at least PAUSE: two thirds of the DB's time
    stay free for the workers, and InnoDB's purge of the deleted rows runs in the gaps."""
    await asyncio.sleep(max(PAUSE, 2 * (time.monotonic() - began)))


async def _by_time(engine: AsyncEngine, table: Table, pk: str, column: str, cutoff: float) -> int:
    """Delete rows whose `column` < cutoff, oldest first, CHUNK per transaction, at most RUN_MAX."""
    done = 0
    while done < RUN_MAX:
        began = time.monotonic()
        async with engine.begin() as conn:
            ids: list[Any] = list((await conn.execute(select(table.c[pk]).where(table.c[column] < cutoff)
                                           .order_by(table.c[column]).limit(CHUNK))).scalars())
            if ids:
                await conn.execute(delete(table).where(table.c[pk].in_(ids)))
        done += len(ids)
        if len(ids) < CHUNK:
            break
        await _yield_db(began)
    return done


async def cap_samples(engine: AsyncEngine, redis: Redis, keys: Keys, keep: int) -> int:
    """Keep the newest `keep` samples of each group that received samples since the last run. The writer
    stores at most `keep` per group per batch, so only those groups can be over; older excess leaves with
    the time-based retention. Bounded: CAP_SCAN groups per run, CAP_GROUPS per query, RUN_MAX deletions."""
    start = time.time()
    cursor = await redis.get(keys.retention_cap_since)
    since = (float(cursor) if cursor else start - DAY) - CAP_LOOKBACK
    async with engine.connect() as conn:
        fps: list[str] = list((await conn.execute(select(_samples.c.fingerprint).where(_samples.c.received_at >= since)
                                       .distinct().limit(CAP_SCAN))).scalars())
    done = 0
    for i in range(0, len(fps), CAP_GROUPS):
        async with engine.connect() as conn:
            over: list[str] = list((await conn.execute(
                select(_samples.c.fingerprint).where(_samples.c.fingerprint.in_(fps[i:i + CAP_GROUPS]))
                .group_by(_samples.c.fingerprint).having(func.count() > keep))).scalars())
        for fp in over:
            done += await _trim_group(engine, fp, keep, RUN_MAX - done)
            if done >= RUN_MAX:
                break
        if done >= RUN_MAX:
            return done  # the cursor stays: the next run looks at these groups again
    if len(fps) < CAP_SCAN:
        await redis.set(keys.retention_cap_since, start)
    return done


async def _trim_group(engine: AsyncEngine, fp: str, keep: int, budget: int) -> int:
    """Delete a group's samples beyond its `keep` newest, CHUNK per transaction, all of them (a hot group
    gets thousands between two runs: trimming only one CHUNK per run let the table grow without bound)."""
    done = 0
    while done < budget:
        began = time.monotonic()
        async with engine.begin() as conn:
            ids: list[Any] = list((await conn.execute(
                select(_samples.c.id).where(_samples.c.fingerprint == fp)
                .order_by(_samples.c.received_at.desc(), _samples.c.id.desc()).offset(keep).limit(CHUNK))
            ).scalars())
            if ids:
                await conn.execute(delete(_samples).where(_samples.c.id.in_(ids)))
        done += len(ids)
        if len(ids) < CHUNK:
            break
        await _yield_db(began)
    return done


async def drop_groups(engine: AsyncEngine, redis: Redis, keys: Keys, cutoff: float) -> int:
    """Groups idle since `cutoff`: their samples, the group rows, then their Redis state. Their hour buckets
    are gone already: hours are kept FAULTLINE_HOURLY_RETENTION_DAYS (14), groups far longer (90)."""
    drop = load_script(redis, "live_prune")
    done = 0
    while done < RUN_MAX:
        began = time.monotonic()
        async with engine.begin() as conn:
            fps: list[str] = list((await conn.execute(select(_groups.c.fingerprint).where(_groups.c.last_seen < cutoff)
                                           .order_by(_groups.c.last_seen).limit(CHUNK // 10))).scalars())
            if fps:
                await conn.execute(delete(_samples).where(_samples.c.fingerprint.in_(fps)))
                await conn.execute(delete(_groups).where(_groups.c.fingerprint.in_(fps),
                                                         _groups.c.last_seen < cutoff))
        for k, part in keys.by_shard(fps):  # each group's live/feed state is in its own key shard
            await drop(keys=[k.live_counts, k.feed_emitted, k.feed_last_seen, k.feed_groups,
                             k.feed_dirty, k.live_new], args=[-1, k.feed_index(""), *part])
        done += len(fps)
        if len(fps) < CHUNK // 10:
            break
        await _yield_db(began)
    return done


async def run(engine: AsyncEngine, redis: Redis, keys: Keys, settings: Settings) -> Pruned:
    now = time.time()
    out = Pruned()
    out.samples = await _by_time(engine, _samples, "id", "received_at", now - settings.sample_retention_days * DAY)
    out.groups = await drop_groups(engine, redis, keys, now - settings.group_retention_days * DAY)
    out.capped = await cap_samples(engine, redis, keys, settings.samples_per_group)
    out.deliveries = await _by_time(engine, _deliveries, "id", "created_at", now - DELIVERY_RETENTION_DAYS * DAY)
    if out.samples or out.groups or out.capped or out.deliveries:
        log.info("retention: %d old samples, %d idle groups, %d samples over the per-group cap, %d delivery "
                 "records deleted", out.samples, out.groups, out.capped, out.deliveries)
    return out
