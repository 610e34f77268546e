"""The scheduler: once per interval, sync counts to the DB and prune old rows.

Any number of replicas may run. Each interval is a bucket of Redis server time (one clock for all);
the replica that wins `SET NX` on the bucket's lock does the work, the others skip it. The sync is
idempotent anyway (workers/sync.py), so the lock saves work rather than guarding correctness.
A failed sync is retried with backoff within its interval (core/backoff.py); nothing it moved is lost.
SIGTERM waits for a sync in progress to finish, then exits 0.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from core.backoff import Backoff
from core.keys import Keys
from core.redis import as_str
from core.settings import Settings
from workers import retention
from workers.lifecycle import Lifecycle
from workers.prune import prune_idle_groups, rebase_new_groups
from workers.sync import housekeeping, prune_consumers, sync_counts

log = logging.getLogger("faultline.scheduler")
HOUSEKEEPING_EVERY = 10  # intervals


async def run_scheduler(settings: Settings, name: str, *, handle_signals: bool = True,
                        stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM, or until `stop` is set (return: exit 0). Redis/DB errors: retry with backoff,
    logged once per outage; an error waiting cannot fix, or a heartbeat that stopped, raises SystemExit(1)
    for the supervisor. handle_signals=False: run in process, ended by `stop` (workers/lifecycle.py)."""
    async with Lifecycle(settings, "scheduler", name, pool_size=8, handle_signals=handle_signals,
                         stop=stop) as life:
        life.beat()
        redis, engine, keys = life.redis, life.engine, life.keys
        loops = [
            life.spawn(_every(redis, keys, settings, name, "retention", settings.retention_interval,
                              keys.retention_lock, lambda: retention.run(engine, redis, keys, settings)),
                       "retention"),
            # the per-group sample cap more often than the rest of retention: between two runs a hot group
            # gathers samples by the thousand (each batch writes up to samples_per_group of them)
            life.spawn(_every(redis, keys, settings, name, "sample cap", settings.sample_cap_interval,
                              keys.sample_cap_lock,
                              lambda: retention.cap_samples(engine, redis, keys, settings.samples_per_group)),
                       "sample cap"),
        ]
        for loop in loops:  # they only end by giving up (Backoff): restart us
            loop.add_done_callback(lambda _: life.stop.set())
        failed = await _sync_every_interval(life, settings, name)
        failed = failed or life.failed or any(t.done() and not t.cancelled() for t in loops)
    if failed:
        raise SystemExit(1)


async def _sync_every_interval(life: Lifecycle, settings: Settings, name: str) -> bool:
    """The scheduler's own work inside its lifecycle; True when an error outlasted the backoff."""
    redis, engine, keys, stop = life.redis, life.engine, life.keys, life.stop
    interval = settings.sync_interval
    backoff = Backoff.for_loop(f"scheduler {name} sync", log, settings)
    done_bucket = -1
    log.info("scheduler %s: sync every %.1fs", name, interval)
    while not stop.is_set():
        try:
            secs, micros = await redis.time()
            now = secs + micros / 1e6
            bucket = int(now // interval)
            wait = (bucket + 1) * interval - now
            if bucket != done_bucket and await _take_lock(redis, keys, bucket, name, interval):
                # shield: a SIGTERM arriving mid-sync lets the sync finish (no half-done batch)
                await asyncio.shield(_run_once(redis, engine, keys, settings, bucket, name))
                done_bucket = bucket
            backoff.ok()
        except Exception as exc:
            try:  # retry within the interval: the lock is ours until the bucket ends (see _take_lock)
                wait = backoff.next_delay(exc)
            except Exception:
                return True
        try:
            await asyncio.wait_for(stop.wait(), timeout=max(0.01, wait))
        except TimeoutError:
            pass
    return False


async def _every(redis: Redis, keys: Keys, settings: Settings, name: str, what: str, every: float,
                 lock: Callable[[int], str], job: Callable[[], Awaitable[Any]]) -> None:
    """`job` beside the sync, never delaying it: one replica per interval of Redis time (SET NX PX)."""
    backoff = Backoff.for_loop(f"scheduler {name} {what}", log, settings)
    while True:
        try:
            secs, micros = await redis.time()
            now = secs + micros / 1e6
            bucket = int(now // every)
            if await redis.set(lock(bucket), name, nx=True, px=int(every * 2000)):
                await job()
            backoff.ok()
            await asyncio.sleep(max(0.05, (bucket + 1) * every - now))
        except Exception as exc:
            await backoff.failed(exc)


async def _take_lock(redis: Redis, keys: Keys, bucket: int, name: str, interval: float) -> bool:
    """The bucket's lock: won now, or won by us earlier in this bucket before the sync failed (retry)."""
    lock = keys.sync_lock(bucket)
    if await redis.set(lock, name, nx=True, px=int(interval * 2000)):
        return True
    return as_str(await redis.get(lock) or b"") == name


async def _run_once(redis: Redis, engine: AsyncEngine, keys: Keys, settings: Settings, bucket: int,
                    name: str) -> None:
    added = await sync_counts(redis, engine, keys, settings)
    try:  # bounded per-group memory (workers/prune.py); a failure here never undoes the sync
        pruned = 0
        for shard in keys.all_shards:
            await rebase_new_groups(redis, engine, shard)
            pruned += await prune_idle_groups(redis, shard, settings)
        if pruned:
            log.info("pruned %d idle groups from the live hashes", pruned)
    except Exception as exc:
        log.warning("live-group pruning failed, retrying next interval: %s", exc)
    runs = keys.sync_runs
    pipe = redis.pipeline(transaction=False)
    pipe.hincrby(runs, str(bucket), 1)
    pipe.expire(runs, 3600)
    await pipe.execute()
    if bucket % HOUSEKEEPING_EVERY == 0:
        await housekeeping(engine, settings.hourly_retention_days)
        await prune_consumers(redis, keys)
    log.debug("sync bucket %d by %s: %d events", bucket, name, added)
