"""The read API's counts are exact before any sync, after it, and while syncs race the reads."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from core.db.engine import make_engine
from core.events import Event
from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings
from core.tasks import PERSIST_EVENTS
from tests.integration.conftest import api_client, prepare
from workers.sync import sync_counts
from workers.writer import BatchWriter


@pytest.fixture
def settings(make_settings: Any, db_url: str) -> Settings:
    return make_settings(database_url=db_url)


async def write_groups(settings: Settings) -> None:
    """What a worker does (group rows + samples), WITHOUT the count sync."""
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    engine = make_engine(settings)
    writer = BatchWriter(settings, engine, redis)
    for _id, fields in await redis.xrange(keys.stream):
        msg = orjson.loads(fields[b"data"])
        assert msg["task_name"] == PERSIST_EVENTS
        await writer.write([Event.model_validate(e) for e in msg["kwargs"]["events"]])
    await redis.delete(keys.stream)
    await redis.aclose()
    await engine.dispose()


async def send(c: Any, per_group: dict[str, int]) -> None:
    events = [{"message": f"{fp}Error: boom", "fingerprint": fp} for fp, n in per_group.items() for _ in range(n)]
    for i in range(0, len(events), 100):
        r = await c.post("/errors/batch", json={"events": events[i:i + 100]})
        assert r.status_code == 202, r.text


async def read_counts(c: Any) -> dict[str, int]:
    items = (await c.get("/errors", params={"limit": 500})).json()["items"]
    return {g["message"].split("Error")[0]: g["count"] for g in items}


async def test_counts_exact_before_and_after_sync(settings: Settings) -> None:
    await prepare(settings)
    expected = {"alpha": 7, "beta": 3, "gamma": 1}
    async with api_client(settings) as c:
        await send(c, expected)
        await write_groups(settings)
        assert await read_counts(c) == expected  # no sync has run: counts come from Redis
        items = (await c.get("/errors", params={"limit": 500})).json()["items"]
        one = next(g for g in items if g["message"].startswith("alpha"))
        detail = (await c.get(f"/errors/{one['fingerprint']}")).json()
        assert detail["count"] == 7 and detail["samples"][0]["received_at"].endswith("Z")
        await send(c, {"alpha": 2})
        redis = make_redis(settings, timeout=5)
        engine = make_engine(settings)
        await sync_counts(redis, engine, Keys.from_settings(settings))
        expected["alpha"] += 2
        assert await read_counts(c) == expected  # after the sync: the DB holds it, nothing doubled
        await send(c, {"beta": 4})
        expected["beta"] += 4
        assert await read_counts(c) == expected
        await redis.aclose()
        await engine.dispose()


async def test_counts_exact_while_syncs_race_reads(settings: Settings) -> None:
    """Syncs run back to back while events arrive and readers read: no read ever shows more than was
    accepted, nor less than was accepted before the read began."""
    await prepare(settings)
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    engine = make_engine(settings)
    accepted = 0
    stop = asyncio.Event()
    async with api_client(settings) as c:
        await send(c, {"hot": 1})
        accepted = 1
        await write_groups(settings)

        async def syncer() -> None:
            while not stop.is_set():
                await sync_counts(redis, engine, keys)
                await asyncio.sleep(0)

        task = asyncio.create_task(syncer())
        try:
            for _ in range(40):
                before = accepted
                seen = (await read_counts(c))["hot"]
                assert before <= seen <= accepted, (before, seen, accepted)
                await send(c, {"hot": 3})
                accepted += 3
        finally:
            stop.set()
            await task
        assert (await read_counts(c))["hot"] == accepted
    await redis.aclose()
    await engine.dispose()


async def test_cursor_is_bound_to_its_sort_and_wrong_method_is_405(settings: Settings) -> None:
    await prepare(settings)
    async with api_client(settings) as c:
        await send(c, {f"g{i}": 1 for i in range(4)})
        await write_groups(settings)
        page = (await c.get("/errors", params={"sort": "count", "limit": 2})).json()
        assert page["next_cursor"]
        r = await c.get("/errors", params={"sort": "last_seen", "cursor": page["next_cursor"]})
        assert r.status_code == 400 and r.json()["error"] == "invalid_cursor"
        assert "sort=count" in r.json()["message"]
        r = await c.get("/errors/log")
        assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"] == "method_not_allowed"


async def test_the_sending_application_reads_its_own_events_with_its_ingest_key(settings: Settings) -> None:
    pid = await prepare(settings)
    async with api_client(settings) as c:
        r = await c.post("/errors/log", json={"message": "ValueError: mine"})
        event_id = r.json()["event_id"]
        as_app = {"Authorization": ""}  # the ingest key only (the client's default X-Faultline-Key)
        job = await c.get(f"/jobs/{event_id}", headers=as_app)
        assert job.status_code == 200 and job.json()["state"] == "queued" and job.json()["project_id"] == pid
        other = await c.get(f"/jobs/{event_id}", params={"project_id": pid + 1}, headers=as_app)
        assert other.status_code == 403 and other.json()["error"] == "forbidden"
        wrong = await c.get(f"/jobs/{event_id}", headers={"Authorization": "", "X-Faultline-Key": "not-a-key"})
        assert wrong.status_code == 401
        nothing = await c.get(f"/jobs/{event_id}", headers={"Authorization": "", "X-Faultline-Key": ""})
        assert nothing.status_code == 401
        assert (await c.get(f"/jobs/{event_id}")).json()["state"] == "queued"  # the admin token still reads it
