"""Key shards on ONE Redis server, seen from the worker (issue 12: sharding must cost what 1 shard does there):
one reader reads every shard's stream with one blocking XREADGROUP, every event is stored and counted once,
and a dead consumer's message in any shard is still reclaimed after redeliver_after."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from sqlalchemy import select

from core.broker import FaultlineBroker
from core.db.engine import make_engine
from core.db.models import Sample
from core.keys import Keys
from core.redis import make_redis
from core.tasks import persist_message
from tests.integration.conftest import prepare
from tests.integration.test_worker import db_totals, ingest
from tests.waiting import wait_for
from workers.main import run_worker
from workers.scheduler import run_scheduler

SHARDS = 8


async def _xreadgroup_calls(redis: Any) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_xreadgroup", {}).get("calls", 0))


async def test_one_reader_over_every_shard_stores_counts_and_reclaims(make_settings: Any) -> None:
    settings = make_settings(redis_shards=SHARDS, sync_interval=0.5, write_batch_delay=0.01, redeliver_after=0.5,
                             retry_base_delay=0.2, retry_max_attempts=3)
    project = await prepare(settings)
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    assert FaultlineBroker(settings, keys=keys, redis=redis).reader_streams() == [[k.stream for k in keys.streams]]
    # a message of shard 5 taken by a consumer that then died: only a reclaim brings it to the DB
    fp = next(f"ghost-{i}" for i in range(1000) if keys.shard_of(f"ghost-{i}") == 5)
    ghost = {"event_id": "9" * 32, "project_id": project, "fingerprint": fp, "received_at": time.time(),
             "message": "GhostError: left behind"}
    shard = keys.shard(5)
    await redis.xgroup_create(shard.stream, shard.consumer_group, id="0", mkstream=True)
    await redis.xadd(shard.stream, {"data": persist_message([ghost])})
    await redis.xreadgroup(shard.consumer_group, "ghost", {shard.stream: ">"}, count=1)
    # a poison task of shard 3: its retries are parked in shard 3 and pumped back there, then dead-lettered
    poison_fp = next(f"poison-{i}" for i in range(1000) if keys.shard_of(f"poison-{i}") == 3)
    await redis.xadd(keys.shard(3).stream, {"data": persist_message([{"fingerprint": poison_fp}], task_id="p" * 32)})
    stop = asyncio.Event()
    roles = [asyncio.create_task(run_worker(settings, "w-shards", handle_signals=False, stop=stop)),
             asyncio.create_task(run_scheduler(settings, "s-shards", handle_signals=False, stop=stop))]
    engine = make_engine(settings)
    try:
        await ingest(settings, 400, groups=40, prefix="Shard")

        async def all_stored() -> bool:
            total, _ = await db_totals(settings)
            async with engine.connect() as conn:
                reclaimed = (await conn.execute(select(Sample.event_id).where(Sample.event_id == "9" * 32))).first()
            return total == 400 and reclaimed is not None

        await wait_for(all_stored, 30, "400 events counted over 8 shards and the ghost's message reclaimed")

        async def poison_dead() -> bool:
            return int(await redis.llen(keys.dead_letters)) == 1  # type: ignore[misc]

        await wait_for(poison_dead, 30, "the poison task of shard 3 dead-lettered after its retries")
        dead = orjson.loads((await redis.lrange(keys.dead_letters, 0, -1))[0])  # type: ignore[misc]
        assert dead["task_id"] == "p" * 32 and dead["attempts"] == 3
        assert sum([int(await redis.zcard(k.retries)) for k in keys.all_shards]) == 0
        queued = sum([int(await redis.xlen(k.stream)) for k in keys.streams])
        assert queued == 0  # every message acked and deleted, in every shard
        # Idle: one blocked XREADGROUP a second for all 9 streams (+1 of the alert evaluator), not one per shard
        before = await _xreadgroup_calls(redis)
        await asyncio.sleep(3)
        calls = await _xreadgroup_calls(redis) - before
        assert calls <= 3 * 2 + 3, f"{calls} XREADGROUPs in 3 idle seconds: a reader per shard?"
        assert not any(task.done() for task in roles)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*roles, return_exceptions=True), 30)
        await engine.dispose()
        await redis.aclose()
