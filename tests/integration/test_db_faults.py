"""The worker's DB path against real MariaDB: a row the DB refuses for good is dead-lettered with the DB's own
reason while its batch-mates are stored; a DB that is down is transient and never dead-letters."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import func, select

from core.db.engine import make_engine
from core.db.models import ErrorGroup, Sample
from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings
from core.tasks import persist_message
from faultline.mariadb import MariaDBServer
from tests.integration.conftest import prepare
from tests.integration.test_redis_faults import load, wait_all_stored
from tests.waiting import wait_for


def event(**over: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "project_id": 1, "fingerprint": f"fp-{uuid.uuid4().hex[:6]}",
            "received_at": time.time(), "message": "ValueError: fine", "level": "error", "service": "web", **over}


async def stored_ids(settings: Settings) -> set[str]:
    engine = make_engine(settings)
    try:
        async with engine.connect() as conn:
            return {r[0] for r in (await conn.execute(select(Sample.event_id))).all()}
    finally:
        await engine.dispose()


async def test_refused_rows_are_dead_lettered_with_the_db_reason_and_batch_mates_stored(
        make_settings: Any, mariadb_url: str, spawn: Any) -> None:
    # write_batch_delay 0.3 s: the three tasks land in ONE writer batch, which the DB refuses as a whole
    settings = make_settings(database_url=mariadb_url, retry_base_delay=0.1, retry_max_delay=0.3,
                             retry_max_attempts=3, write_batch_delay=0.3)
    await prepare(settings)
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    too_long = event(service="s" * 300)  # VARCHAR(128) in strict mode: 1406 Data too long
    bad_id = event(message="m" * 70_000)  # over TEXT's 65,535 bytes: 1406 on another column
    task_a = [event() for _ in range(4)] + [too_long] + [event() for _ in range(3)]
    task_b = [event(), bad_id, event()]
    task_c = [event() for _ in range(5)]
    for evs in (task_a, task_b, task_c):
        await redis.xadd(keys.stream, {"data": persist_message(evs)})
    spawn("worker-db", ["worker"], settings)

    async def two_dead() -> bool:
        return int(await redis.llen(keys.dead_letters)) >= 2

    await wait_for(two_dead, 60, "the two refused rows in the dead-letter list")
    await asyncio.sleep(1)  # nothing else may follow them
    dead = [orjson.loads(x) for x in await redis.lrange(keys.dead_letters, 0, -1)]
    assert len(dead) == 2
    by_event = {}
    for d in dead:
        events = orjson.loads(d["message"])["kwargs"]["events"]
        assert len(events) == 1  # only the refused row is dead-lettered, not its task-mates
        by_event[events[0]["event_id"]] = d
        assert d["attempts"] == 3 and "1406" in d["error"] and "Data too long" in d["error"], d["error"]
    assert set(by_event) == {too_long["event_id"], bad_id["event_id"]}
    assert "'service'" in by_event[too_long["event_id"]]["error"]
    assert "'message'" in by_event[bad_id["event_id"]]["error"]

    good = {e["event_id"] for e in task_a + task_b + task_c} - set(by_event)
    assert await stored_ids(settings) == good
    # failed events keep a detail record (state, attempts, error) next to their dedup entry (core/dedup.py);
    # their batch-mates were stored at the first attempt and never failed
    details = {i: raw and orjson.loads(raw) for i, raw in zip(
        [*good, *by_event], await redis.mget([keys.event_detail(1, i) for i in [*good, *by_event]]), strict=True)}
    assert all(details[i] is None for i in good), details
    assert all(details[i]["state"] == "dead" and details[i]["attempts"] == 3 for i in by_event), details
    assert await redis.xlen(keys.stream) == 0 and await redis.zcard(keys.retries) == 0
    await redis.aclose()


async def test_mariadb_down_under_load_never_dead_letters_and_all_is_stored_after(
        make_settings: Any, tmp_path: Path, spawn: Any) -> None:
    db = MariaDBServer(tmp_path / "mariadb").start()
    try:
        settings = make_settings(database_url=db.create_database("down"), sync_interval=0.5,
                                 samples_per_group=100_000, retry_base_delay=0.2, retry_max_delay=1.0,
                                 retry_max_attempts=2)
        await prepare(settings)
        worker = spawn("worker-1", ["worker"], settings)
        scheduler = spawn("scheduler-1", ["scheduler"], settings)
        redis = make_redis(settings, timeout=5)
        keys = Keys.from_settings(settings)

        async def beating() -> bool:
            return bool(await redis.exists(keys.heartbeat("worker", "worker-1")))

        await wait_for(beating, 90, "the worker's heartbeat")
        async with load(settings, senders=2) as lo:
            await asyncio.sleep(1.5)
            await asyncio.to_thread(db.stop)
            await asyncio.sleep(8)  # > retry_max_attempts x retry delays: only "transient" keeps them alive
            assert await redis.llen(keys.dead_letters) == 0
            await asyncio.to_thread(db.start)
            await asyncio.sleep(1)
            await lo.finish()
        assert lo.statuses == {202: lo.statuses[202]}  # ingest never needs the DB
        await wait_all_stored(settings, set(lo.accepted), 90)
        assert worker.alive() and scheduler.alive()
        engine = make_engine(settings)
        async with engine.connect() as conn:
            unnamed = (await conn.execute(select(func.count()).select_from(ErrorGroup)
                                          .where(ErrorGroup.message.is_(None)))).scalar_one()
        await engine.dispose()
        assert unnamed == 0  # every group filled by the workers, none left as a count-only placeholder
        await redis.aclose()
    finally:
        db.stop()
