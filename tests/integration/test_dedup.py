"""Dedup by (project, event id) in compact hashes per generation of time buckets; job state next to it (real
redis-server)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from api.ingest import Ingestor
from core.db import repo
from core.db.engine import make_engine
from core.dedup import QUEUED, RETRYING, JobStates
from core.events import LogErrorIn
from core.keys import Keys
from core.redis import make_redis
from core.runtime import Runtime
from core.settings import Settings
from tests.integration.conftest import INGEST_KEY, api_client, prepare
from tests.integration.test_ingest_api import drain_queue
from tests.waiting import wait_for

OTHER_KEY = "other-project-key-0123456789"


async def dedup_footprint(settings: Settings) -> tuple[int, int, set[str]]:
    """(bytes, ids, encodings) of every dedup bucket hash, measured by Redis itself."""
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    total = ids = 0
    encodings: set[str] = set()
    try:
        async for key in redis.scan_iter(match=keys.dedup_prefix + "*", count=1000):
            if key.decode() == keys.dedup_meta:
                continue
            total += int(await redis.memory_usage(key, samples=0) or 0)
            ids += int(await redis.hlen(key))  # type: ignore[misc]
            encodings.add((await redis.object("encoding", key)).decode())  # type: ignore[union-attr]
    finally:
        await redis.aclose()
    return total, ids, encodings


async def test_same_event_id_in_two_projects_counts_in_both(make_settings: Any) -> None:
    settings = make_settings()
    p1 = await prepare(settings)
    engine = make_engine(settings)
    async with engine.begin() as conn:
        p2, _ = await repo.ensure_project(conn, "other", OTHER_KEY)
    await engine.dispose()
    eid = uuid.uuid4().hex
    async with api_client(settings) as c:
        r1 = await c.post("/errors/log", json={"message": "E: one", "event_id": eid})
        r2 = await c.post("/errors/log", json={"message": "E: one", "event_id": eid},
                          headers={"X-Faultline-Key": OTHER_KEY})
        assert r1.status_code == r2.status_code == 202
        assert "duplicate" not in r1.json() and "duplicate" not in r2.json()
        # within the window a repeat is a duplicate, in each project
        for key in (INGEST_KEY, OTHER_KEY):
            r = await c.post("/errors/log", json={"message": "E: one", "event_id": eid},
                             headers={"X-Faultline-Key": key})
            assert r.json()["duplicate"] is True
        job = (await c.get(f"/jobs/{eid}", params={"project_id": p2})).json()
        assert (job["state"], job["project_id"]) == ("queued", p2)
        assert (await c.get(f"/jobs/{eid}")).json()["state"] == "queued"
        assert (await c.get(f"/jobs/{eid}", params={"project_id": p2 + 5})).status_code == 404
        assert await drain_queue(settings) == 2
        for p in (p1, p2):
            job = (await c.get(f"/jobs/{eid}", params={"project_id": p})).json()
            assert job["state"] == "succeeded" and job["attempts"] == 1
        groups = (await c.get("/errors")).json()["items"]
        assert sorted((g["project_id"], g["count"]) for g in groups) == [(p1, 1), (p2, 1)]


async def test_ids_are_forgotten_after_the_window_and_buckets_expire(make_settings: Any) -> None:
    settings = make_settings(dedup_ttl=2, dedup_buckets=2)  # 1-s buckets: remembered 2..3 s
    await prepare(settings)
    eid = uuid.uuid4().hex
    async with api_client(settings) as c:
        assert "duplicate" not in (await c.post("/errors/log", json={"message": "x", "event_id": eid})).json()
        await asyncio.sleep(1.0)
        assert (await c.post("/errors/log", json={"message": "x", "event_id": eid})).json()["duplicate"]
        await asyncio.sleep(3.2)
        assert "duplicate" not in (await c.post("/errors/log", json={"message": "x", "event_id": eid})).json()

        async def expired() -> bool:  # whole buckets expired: a hash expires 2..4 s after its newest id here
            return (await dedup_footprint(settings))[1] == 0
        await wait_for(expired, 4.3, "every dedup hash expired", every=0.1)


async def test_bytes_per_remembered_id_is_small_and_hashes_stay_listpacks(make_settings: Any) -> None:
    settings = make_settings(dedup_ttl=300, dedup_buckets=10)  # 30-s buckets: the test stays in two
    await prepare(settings)
    async with api_client(settings) as c:
        for _ in range(2):  # the first wave sizes the shards of the next bucket (and may share it)
            for _ in range(4):
                r = await c.post("/errors/batch", json={"events": [{"message": f"E{i % 50}"} for i in range(1000)]})
                assert r.status_code == 202 and r.json()["accepted"] == 1000
    size, ids, encodings = await dedup_footprint(settings)
    per_id = size / ids
    print(f"dedup: {ids} ids in {size} B = {per_id:.1f} B/id, encodings {encodings}")
    assert ids == 8000
    assert encodings == {"listpack"}
    assert per_id <= 24, per_id  # the old one-key-per-id layout measured ~100 B/id (MEMORY USAGE ~90)


async def test_ids_are_remembered_across_generation_edges_and_forgotten_after_the_window(make_settings: Any) -> None:
    """1-s buckets, 3-s generations, for ~3 generations: an id resent 0.5-2.5 s later (inside the window
    whatever the bucket and generation edges) is always a duplicate and keeps its job state; one resent
    after the window (>= ttl + one bucket) is counted again and its state is gone."""
    settings = make_settings(dedup_ttl=3, dedup_buckets=3, queue_soft_limit=10_000_000)
    rt = Runtime.open(settings)
    ingestor, states = Ingestor(rt), JobStates(rt.redis, rt.keys, settings)

    def events(ids: list[str]) -> list[LogErrorIn]:
        return [LogErrorIn(message="m", fingerprint=f"g{n % 7}", event_id=i) for n, i in enumerate(ids)]

    sent: list[tuple[float, list[str]]] = []
    rechecked: set[int] = set()  # waves sent again once past the window (then remembered anew)
    try:
        end = time.monotonic() + 10
        while time.monotonic() < end:
            now = time.monotonic()
            ids = [uuid.uuid4().hex for _ in range(20)]
            assert not any(a.duplicate for a in await ingestor.ingest(1, events(ids)))
            if len(sent) % 5 == 0:
                await states.set([(1, i, f"g{n % 7}") for n, i in enumerate(ids)], RETRYING)
            sent.append((now, ids))
            recent = [(k, ids) for k, (t, ids) in enumerate(sent) if 0.5 <= now - t <= 2.5]
            if recent:
                k, old = recent[0]
                again = await ingestor.ingest(1, events(old))
                assert all(a.duplicate for a in again), (now - sent[k][0], [a.duplicate for a in again])
                want = RETRYING if k % 5 == 0 else QUEUED  # QUEUED: as ingest.lua wrote it
                assert await states.get([(1, i) for i in old]) == [want] * len(old)
            # waves past the window, most of them still stored in the generation before (not yet swept)
            gone = [k for k, (t, _) in enumerate(sent) if now - t >= 4.3 and k not in rechecked][:2]
            for k in gone:
                ids = sent[k][1]
                assert await states.get([(1, i) for i in ids]) == [None] * len(ids)
                assert not any(a.duplicate for a in await ingestor.ingest(1, events(ids)))
                rechecked.add(k)
            await asyncio.sleep(0.1)
        assert len(rechecked) >= 5
        await asyncio.sleep(4.2)  # past the window for the last wave too
        first, last = sent[0][1], sent[-1][1]
        assert await states.get([(1, i) for i in first + last]) == [None] * 40
        assert not any(a.duplicate for a in await ingestor.ingest(1, events(last)))
    finally:
        await rt.close()
