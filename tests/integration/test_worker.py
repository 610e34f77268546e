"""Workers as real processes: crashes, redelivery, poison tasks, DB outages, scheduler replicas."""

from __future__ import annotations

import asyncio
import itertools
import signal
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import func, select

from core.db.engine import make_engine
from core.db.models import ErrorGroup, Sample
from core.dedup import JobStates, state_name
from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings
from core.tasks import persist_message
from faultline.mariadb import MariaDBServer
from tests.integration.conftest import api_client, prepare
from tests.waiting import wait_for
from workers.sync import sync_counts


async def db_totals(settings: Settings) -> tuple[int, int]:
    """(sum of group counts, number of stored sample events)"""
    engine = make_engine(settings)
    try:
        async with engine.connect() as conn:
            total = (await conn.execute(select(func.coalesce(func.sum(ErrorGroup.count), 0)))).scalar_one()
            samples = (await conn.execute(select(func.count()).select_from(Sample))).scalar_one()
        return int(total), int(samples)
    finally:
        await engine.dispose()


async def ingest(settings: Settings, n: int, groups: int = 5, prefix: str = "E") -> list[str]:
    ids: list[str] = []
    async with api_client(settings) as c:
        for start in range(0, n, 100):
            batch = [{"message": f"{prefix}{i % groups}Error: boom", "fingerprint": f"{prefix}-{i % groups}"}
                     for i in range(start, min(n, start + 100))]
            r = await c.post("/errors/batch", json={"events": batch})
            assert r.status_code == 202 and r.json()["accepted"] == len(batch)
            ids += [res["event_id"] for res in r.json()["results"]]
    return ids


async def test_sigkill_mid_batch_is_redelivered_without_traffic(make_settings: Any, spawn: Any,
                                                                 tmp_path: Path) -> None:
    settings = make_settings(redeliver_after=2.0, write_batch_delay=0.01)
    pid = await prepare(settings)
    ids = await ingest(settings, 300)
    # Hold the SQLite write lock so worker A fetches the messages and then blocks mid-batch.
    db_file = settings.resolved_database_url.split("///", 1)[1]
    lock = sqlite3.connect(db_file, timeout=5)
    lock.execute("BEGIN EXCLUSIVE")
    redis = make_redis(settings, timeout=5)
    keys = Keys.from_settings(settings)
    a = spawn("worker-a", ["worker"], settings)

    async def fetched() -> bool:
        info = await redis.xpending(keys.stream, keys.consumer_group)
        return int(info["pending"]) > 0

    await wait_for(fetched, 20, "worker A to fetch messages")
    await asyncio.sleep(0.5)
    a.signal(signal.SIGKILL)
    a.proc.wait()  # type: ignore[union-attr]
    lock.rollback()
    lock.close()
    assert int((await redis.xpending(keys.stream, keys.consumer_group))["pending"]) > 0
    spawn("worker-b", ["worker"], settings)

    async def b_reads() -> bool:  # B joined the group (its first read): from here on only reclaim is timed,
        # not the start of a Python process, which a loaded machine stretches to many seconds
        return len(await redis.xinfo_consumers(keys.stream, keys.consumer_group)) >= 2

    await wait_for(b_reads, 60, "worker B to start reading")
    b_reading_at = time.monotonic()

    async def all_stored() -> bool:  # acked (XDEL on ack) only after the batch committed
        return await redis.xlen(keys.stream) == 0

    await wait_for(all_stored, 30, "worker B to reclaim and store every event")
    redelivered_in = time.monotonic() - b_reading_at
    engine = make_engine(settings)
    await sync_counts(redis, engine, keys)
    await engine.dispose()
    assert (await db_totals(settings))[0] == 300  # counted exactly once
    codes = await JobStates(redis, keys, settings).get([(pid, i) for i in ids])
    assert {state_name(c) for c in codes if c is not None} == {"succeeded"} and None not in codes
    assert redelivered_in < 2.0 + 8, redelivered_in  # redeliver_after + a few claim rounds and the batch
    await redis.aclose()


async def test_poison_task_goes_to_dead_letters_with_growing_backoff(make_settings: Any, spawn: Any) -> None:
    settings = make_settings(retry_base_delay=0.4, retry_max_attempts=4)
    await prepare(settings)
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    task_id = uuid.uuid4().hex
    await redis.xadd(keys.stream, {"data": persist_message([{"bogus": True}], task_id=task_id)})
    good_id = uuid.uuid4().hex
    good = {"event_id": good_id, "project_id": 1, "fingerprint": "f" * 64, "received_at": time.time(),
            "message": "fine", "level": "error", "service": "web"}
    await redis.xadd(keys.stream, {"data": persist_message([good])})
    spawn("worker-p", ["worker"], settings)

    seen: list[tuple[float, dict[str, Any]]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        raw = await redis.get(keys.job(task_id))
        if raw is not None:
            state = orjson.loads(raw)
            if not seen or seen[-1][1] != state:
                seen.append((time.monotonic(), state))
            if state["state"] == "dead":
                break
        await asyncio.sleep(0.01)
    assert seen and seen[-1][1]["state"] == "dead", seen
    assert [s["attempts"] for _, s in seen] == [1, 2, 3, 4]
    delays = [s["next_attempt_in"] for _, s in seen[:-1]]
    assert delays[0] < delays[1] < delays[2], delays
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(seen)]
    for gap, delay in zip(gaps, delays, strict=True):
        assert gap >= delay * 0.95, (gaps, delays)  # never retried early
    assert gaps[2] > gaps[0]
    dead = [orjson.loads(x) for x in await redis.lrange(keys.dead_letters, 0, -1)]
    assert [d["task_id"] for d in dead] == [task_id]
    assert dead[0]["attempts"] == 4 and "ValidationError" in dead[0]["error"]
    # the poison task did not take the good one down with it
    assert await JobStates(redis, keys, settings).get([(1, good_id)]) == [None]
    assert (await db_totals(settings))[1] == 1
    await redis.aclose()


async def test_two_schedulers_sync_each_interval_once(make_settings: Any, spawn: Any) -> None:
    settings = make_settings(sync_interval=0.5)
    await prepare(settings)
    spawn("scheduler-1", ["scheduler"], settings)
    spawn("scheduler-2", ["scheduler"], settings)
    redis = make_redis(settings, timeout=5)
    keys = Keys.from_settings(settings)

    async def both_running() -> bool:
        return bool(await redis.exists(keys.heartbeat("scheduler", "scheduler-1"))
                    and await redis.exists(keys.heartbeat("scheduler", "scheduler-2")))

    await wait_for(both_running, 30, "both schedulers to start")
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < 4:
        await ingest(settings, 50, prefix=f"S{sent}")
        sent += 50
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.2)
    runs = {int(k): int(v) for k, v in (await redis.hgetall(keys.sync_runs)).items()}
    await redis.aclose()
    assert runs and set(runs.values()) == {1}, runs
    assert len(runs) >= 6  # ~one run per 0.5 s interval, not two
    assert (await db_totals(settings))[0] == sent


async def test_db_outage_ingest_keeps_accepting_and_workers_catch_up(
    make_settings: Any, spawn: Any, tmp_path: Path
) -> None:
    db = MariaDBServer(tmp_path / "mariadb").start()
    try:
        settings = make_settings(database_url=db.create_database("outage"), sync_interval=0.5,
                                 retry_base_delay=0.2, retry_max_delay=1.0, retry_max_attempts=2)
        await prepare(settings)
        spawn("worker-1", ["worker"], settings)
        spawn("scheduler-1", ["scheduler"], settings)
        await ingest(settings, 100)

        redis = make_redis(settings, timeout=5)
        keys = Keys.from_settings(settings)

        async def stored(n: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                try:
                    return ((await db_totals(settings))[0] == n and await redis.xlen(keys.stream) == 0
                            and await redis.zcard(keys.retries) == 0)
                except Exception:
                    return False
            return check

        await wait_for(await stored(100), 30, "the first 100 events in the DB")
        db.stop()
        await ingest(settings, 100, prefix="During")  # the API never touches the DB: still 202
        await asyncio.sleep(3)  # workers and the scheduler fail and retry meanwhile
        db.start()
        await wait_for(await stored(200), 60, "workers and sync to catch up after the outage")
        assert await redis.llen(keys.dead_letters) == 0  # outages never dead-letter
        engine = make_engine(settings)
        async with engine.connect() as conn:
            groups = (await conn.execute(select(ErrorGroup.fingerprint, ErrorGroup.message))).all()
        await engine.dispose()
        assert len(groups) == 10 and all(m for _, m in groups)  # placeholders filled by the workers
        await redis.aclose()
    finally:
        db.stop()


async def test_project_create_prints_a_working_key(make_settings: Any) -> None:
    import subprocess
    import sys

    from tests.integration.conftest import env_of

    settings = make_settings()
    await prepare(settings)
    def create() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "faultline", "project", "create", "billing"],
                              env=env_of(settings), capture_output=True, text=True, timeout=60)

    out = await asyncio.to_thread(create)
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    assert len(key) >= 24
    # Keys are stored hashed, so the key cannot be shown again: a second create refuses and says what to do.
    again = await asyncio.to_thread(create)
    assert again.returncode != 0 and "rotate-key" in again.stderr and key not in again.stdout + again.stderr
    async with api_client(settings) as c:
        r = await c.post("/errors/log", json={"message": "billing broke"}, headers={"X-Faultline-Key": key})
        assert r.status_code == 202
