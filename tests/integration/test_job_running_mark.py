"""The batch writer's job states on real Redis and SQLite (workers/jobstate.py): a write that commits within
`job_running_after` goes from queued straight to succeeded (no "running" write to Redis), a write held up by a
locked database shows "running" to GET /jobs/{id} while it waits, then "succeeded"."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import orjson

from core.db.engine import make_engine
from core.dedup import RUNNING, SUCCEEDED, JobStates, state_name
from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings
from tests.integration.conftest import api_client, prepare
from tests.waiting import wait_for
from workers.taskevents import decode
from workers.writer import BatchWriter


async def accepted_events(settings: Settings, n: int) -> tuple[int, list[Any]]:
    """n events through the real ingest route; returns the project and the events as the worker decodes them
    from the task stream."""
    pid = await prepare(settings)
    async with api_client(settings) as c:
        batch = [{"message": f"E{i % 3}Error: boom", "fingerprint": f"mark-{i % 3}"} for i in range(n)]
        r = await c.post("/errors/batch", json={"events": batch})
        assert r.status_code == 202 and r.json()["accepted"] == n
    redis = make_redis(settings, timeout=5)
    keys = Keys.from_settings(settings)
    events = []
    for stream in {k.stream for k in keys.streams}:
        for _, fields in await redis.xrange(stream):
            events += [decode(e) for e in orjson.loads(fields[b"data"])["kwargs"]["events"]]
    await redis.aclose()
    assert len(events) == n
    return pid, events


class Recorded(BatchWriter):
    """The real writer; the states it sets are noted on their way to Redis."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.codes: list[int] = []
        real = self.jobs.set

        async def noted(ids: Any, hashed: Any, code: int) -> None:
            self.codes.append(code)
            await real(ids, hashed, code)

        self.jobs.set = noted  # type: ignore[method-assign]


async def states(settings: Settings, pid: int, events: list[Any]) -> set[str]:
    redis = make_redis(settings, timeout=5)
    try:
        codes = await JobStates(redis, Keys.from_settings(settings), settings).get([(pid, e.event_id) for e in events])
    finally:
        await redis.aclose()
    return {state_name(c) if c is not None else "unknown" for c in codes}


async def test_a_quick_write_is_never_marked_running(make_settings: Any) -> None:
    settings = make_settings(job_running_after=5.0)
    pid, events = await accepted_events(settings, 30)
    assert await states(settings, pid, events) == {"queued"}
    engine, redis = make_engine(settings), make_redis(settings, timeout=5)
    try:
        writer = Recorded(settings, engine, redis)
        await writer.write(events)
        await asyncio.sleep(0.1)  # a mark that was not cancelled would still be due later: none may come
        assert writer.codes == [SUCCEEDED]
        assert await states(settings, pid, events) == {"succeeded"}
    finally:
        await redis.aclose()
        await engine.dispose()


async def test_a_write_held_by_a_locked_database_shows_running_then_succeeded(make_settings: Any) -> None:
    settings = make_settings(job_running_after=0.2)
    pid, events = await accepted_events(settings, 30)
    engine, redis = make_engine(settings), make_redis(settings, timeout=5)
    lock = sqlite3.connect(settings.resolved_database_url.split("///", 1)[1], timeout=5)
    lock.execute("BEGIN EXCLUSIVE")  # the writer's transaction waits for it
    try:
        writer = Recorded(settings, engine, redis)
        write = asyncio.create_task(writer.write(events))

        async def running() -> bool:
            return await states(settings, pid, events) == {"running"}

        await wait_for(running, 10, "the held write's events to show running")
        assert not write.done()
        lock.rollback()
        await asyncio.wait_for(write, 30)
        assert writer.codes == [RUNNING, SUCCEEDED]  # the mark landed before the final state
        assert await states(settings, pid, events) == {"succeeded"}
    finally:
        lock.close()
        await redis.aclose()
        await engine.dispose()
