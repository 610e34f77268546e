"""The hot path and the read API against real Redis and a real DB (SQLite and MariaDB)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import core.redis
from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings
from tests.integration.conftest import api_client, prepare
from workers.sync import sync_counts
from workers.writer import BatchWriter


async def drain_queue(settings: Settings) -> int:
    """Process everything queued the way a worker does (batch writer), then sync counts."""
    import orjson

    from core.db.engine import make_engine
    from core.events import Event
    from core.tasks import PERSIST_EVENTS

    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    engine = make_engine(settings)
    writer = BatchWriter(settings, engine, redis)
    n = 0
    for _id, fields in await redis.xrange(keys.stream):
        msg = orjson.loads(fields[b"data"])
        assert msg["task_name"] == PERSIST_EVENTS
        events = [Event.model_validate(e) for e in msg["kwargs"]["events"]]
        await writer.write(events)
        n += len(events)
    await sync_counts(redis, engine, keys)
    await redis.aclose()
    await engine.dispose()
    return n


@pytest.fixture
def settings(make_settings: Any, db_url: str) -> Settings:
    s = make_settings(database_url=db_url)
    asyncio.get_event_loop_policy()
    return s


async def test_log_returns_202_with_fingerprint_and_event_id(settings: Settings) -> None:
    await prepare(settings)
    async with api_client(settings) as c:
        r = await c.post("/errors/log", json={"message": "TypeError: x is undefined", "service": "web"})
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "queued"
        assert len(body["fingerprint"]) == 64 and int(body["fingerprint"], 16) >= 0
        assert len(body["event_id"]) == 32 and int(body["event_id"], 16) >= 0
        r2 = await c.post("/errors/log", json={"message": "TypeError: x is undefined", "service": "web"})
        assert r2.json()["fingerprint"] == body["fingerprint"]
        assert r2.json()["event_id"] != body["event_id"]


async def test_counts_are_exact_and_repeated_event_ids_count_once(settings: Settings) -> None:
    await prepare(settings)
    async with api_client(settings) as c:
        dup = "0" * 31 + "1"
        results = await asyncio.gather(*[
            c.post("/errors/log", json={"message": f"ValueError: bad {i % 3}", "service": f"svc{i % 2}",
                                        "event_id": dup if i % 10 == 0 else None})
            for i in range(60)
        ])
        assert all(r.status_code == 202 for r in results)
        duplicates = sum(bool(r.json().get("duplicate")) for r in results)
        assert duplicates == 5  # 6 sends of the same id: the first counts
        fps = {r.json()["fingerprint"] for r in results}
        assert len(fps) == 2  # grouped by service: the numbers in the message do not split groups
        assert await drain_queue(settings) == 55
        listing = (await c.get("/errors", params={"sort": "count"})).json()
        assert sum(g["count"] for g in listing["items"]) == 55
        for g in listing["items"]:
            detail = (await c.get(f"/errors/{g['fingerprint']}")).json()
            assert detail["count"] == g["count"]
            assert 1 <= len(detail["samples"]) <= settings.samples_per_group
            assert detail["samples"][0]["fingerprint"] == g["fingerprint"]
        job = (await c.get(f"/jobs/{dup}")).json()
        assert job["state"] == "succeeded"


async def test_batch_has_per_event_results(settings: Settings) -> None:
    await prepare(settings)
    async with api_client(settings) as c:
        events = [{"message": f"E{i}"} for i in range(5)] + [{"message": ""}, {"level": "nope"}]
        events.append({"message": "again", "event_id": "a" * 32})
        events.append({"message": "again", "event_id": "a" * 32})
        r = await c.post("/errors/batch", json={"events": events})
        assert r.status_code == 202, r.text
        body = r.json()
        assert (body["accepted"], body["duplicates"], body["invalid"]) == (6, 1, 2)
        statuses = [res["status"] for res in body["results"]]
        assert statuses == ["queued"] * 5 + ["invalid", "invalid", "queued", "queued"]
        assert body["results"][8]["duplicate"] is True
        assert body["results"][5]["errors"][0]["field"] == "message"
        assert await drain_queue(settings) == 6


async def test_list_filters_sorts_and_paginates(settings: Settings) -> None:
    await prepare(settings)
    async with api_client(settings) as c:
        for i in range(12):
            for _ in range(i + 1):
                await c.post("/errors/log", json={"message": f"Err{i}Kind failure", "fingerprint": f"g{i}",
                                                  "service": "a" if i % 2 else "b",
                                                  "level": "warning" if i % 3 == 0 else "error"})
                await asyncio.sleep(0)
        await drain_queue(settings)
        seen: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"sort": "count", "limit": 5}
            if cursor:
                params["cursor"] = cursor
            page = (await c.get("/errors", params=params)).json()
            seen += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert [g["count"] for g in seen] == list(range(12, 0, -1))
        only_a = (await c.get("/errors", params={"service": "a"})).json()["items"]
        assert {g["service"] for g in only_a} == {"a"} and len(only_a) == 6
        warnings = (await c.get("/errors", params={"level": "warning"})).json()["items"]
        assert len(warnings) == 4 and all(g["level"] == "warning" for g in warnings)
        by_time = (await c.get("/errors", params={"sort": "last_seen", "limit": 100})).json()["items"]
        stamps = [g["last_seen"] for g in by_time]
        assert stamps == sorted(stamps, reverse=True) and len(by_time) == 12


async def test_read_api_needs_the_admin_token(settings: Settings) -> None:
    await prepare(settings)
    async with api_client(settings) as c:
        r = await c.get("/errors", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"] == "invalid_token"
        r = await c.get("/errors", headers={"Authorization": ""})
        assert r.status_code == 401 and r.json()["error"] == "missing_token"
        assert (await c.get("/jobs/" + "f" * 32)).status_code == 404
        assert (await c.get("/errors/" + "f" * 64)).status_code == 404
        assert (await c.get("/errors/xyz")).status_code == 422
        assert (await c.get("/errors", params={"cursor": "!!!"})).status_code == 400


async def test_hot_path_makes_one_redis_round_trip(settings: Settings) -> None:
    """At most two round trips are allowed; ingest itself is exactly one script call."""
    await prepare(settings)
    async with api_client(settings) as c:
        await c.post("/errors/log", json={"message": "warm-up"})  # project key cached
        runtime = c._transport.app.state.runtime  # type: ignore[attr-defined]
        calls: list[tuple[str, str]] = []
        original = runtime.redis.execute_command
        packed = core.redis.evalsha_many  # the ingest call's own packing (core/redis.py PackedScript)

        async def counting(*args: Any, **kwargs: Any) -> Any:
            calls.append((str(args[0]), str(args[1]) if len(args) > 1 else ""))
            return await original(*args, **kwargs)

        async def counting_packed(redis: Any, sha: str, many: list[Any]) -> list[Any]:
            calls.extend(("EVALSHA", sha) for _ in many)
            return await packed(redis, sha, many)

        runtime.redis.execute_command = counting
        core.redis.evalsha_many = counting_packed  # type: ignore[assignment]
        try:
            r = await c.post("/errors/log", json={"message": "counted"})
        finally:
            runtime.redis.execute_command = original
            core.redis.evalsha_many = packed  # type: ignore[assignment]
        assert r.status_code == 202
        ingest_sha = c._transport.app.state.ingestor.script.sha  # type: ignore[attr-defined]
        # Other commands on this client come from background loops (queue depth, projects, live feed).
        assert [sha for name, sha in calls if name == "EVALSHA" and sha == ingest_sha] == [ingest_sha]
        assert not [name for name, _ in calls if name not in {"EVALSHA", "XLEN", "HGETALL"}]


async def test_key_shards_on_one_server_count_each_event_once(make_settings: Any) -> None:
    """8 logical shards on one Redis: a loop turn's events of every shard go out as one call (api/ingestcall.py);
    every event lands in its fingerprint's shard exactly once, resent ids count 0."""
    settings = make_settings(redis_shards=8)
    await prepare(settings)
    keys = Keys.from_settings(settings)
    events = [{"message": f"sharded {i % 40}", "fingerprint": f"shard-fp-{i % 40}", "event_id": f"{i:032x}"}
              for i in range(400)]
    async with api_client(settings) as c:
        replies = await asyncio.gather(*(c.post("/errors/batch", json={"events": events[i:i + 20]})
                                         for i in range(0, 400, 20)))
        assert {r.status_code for r in replies} == {202}
        again = await c.post("/errors/batch", json={"events": events[:20]})  # resent: duplicates
        assert all(res["duplicate"] for res in again.json()["results"])
    redis = make_redis(settings, timeout=5)
    per_shard = [sum(int(v) for v in (await redis.hgetall(keys.shard(i).live_counts)).values())  # type: ignore[misc]
                 for i in range(keys.shards)]
    await redis.aclose()
    assert sum(per_shard) == 400 and sum(1 for n in per_shard if n) >= 4, per_shard
