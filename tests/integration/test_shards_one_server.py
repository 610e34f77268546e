"""Key shards on ONE Redis server keep every shard's remembered ids in one dedup layout, the global tag's
(core/deduphome.py): one meta per call, dedup across shards, and the shards' own layouts of before still
read after an upgrade until they expire; project quotas are one state there, exact whatever the shards
(core/ratelimit/quota.py). Real redis-server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core import deduphome
from core.dedup import QUEUED, JobStates
from core.keys import Keys
from core.ratelimit.quota import overflow_fingerprint
from core.redis import make_redis
from core.settings import Settings
from tests.integration.conftest import api_client, prepare
from tests.integration.test_ingest_sections import SHARDS, batch, counted
from workers.main import _oldest_age

pytestmark = pytest.mark.asyncio


async def layouts(settings: Settings) -> tuple[int, list[int]]:
    """(ids counted in the shared meta, the shards whose own dedup meta exists)."""
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    try:
        meta = await redis.hgetall(keys.root.dedup_meta)  # type: ignore[misc]
        written = sum(int(v) for f, v in meta.items() if f.startswith(b"gn:"))
        own = [i for i, k in enumerate(keys.all_shards) if await redis.exists(k.dedup_meta)]
        return written, own
    finally:
        await redis.aclose()


async def test_every_shard_remembers_in_one_layout_and_dedups_across_shards(make_settings: Any) -> None:
    settings = make_settings(redis_shards=SHARDS)
    await prepare(settings)
    keys = Keys.from_settings(settings)
    events = batch(100, "5", groups=40)
    async with api_client(settings) as c:
        r = await c.post("/errors/batch", json={"events": events})
        assert r.status_code == 202 and r.json()["accepted"] == 100, r.text
        assert await layouts(settings) == (100, [])  # one layout, no shard's own meta
        # the same event ids resent with fingerprints of OTHER shards: still duplicates
        moved = []
        for e in events[:20]:
            fp = next(f"{e['fingerprint']}-{n}" for n in range(100)
                      if keys.shard_of(f"{e['fingerprint']}-{n}") != keys.shard_of(e["fingerprint"]))
            moved.append({**e, "fingerprint": fp})
        again = await c.post("/errors/batch", json={"events": moved})
        assert again.json()["duplicates"] == 20, again.text
    live, pending, queued = await counted(settings)
    assert sum(live.values()) == pending == queued == 100


async def test_an_upgrade_still_reads_each_shards_own_layout_until_it_expires(
        make_settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(redis_shards=SHARDS)
    pid = await prepare(settings)
    keys = Keys.from_settings(settings)
    old = batch(60, "6", groups=30)
    with monkeypatch.context() as m:  # the version before: every shard remembers in its own layout
        m.setattr(deduphome, "shared", lambda redis, keys: False)
        async with api_client(settings) as c:
            r = await c.post("/errors/batch", json={"events": old})
            assert r.status_code == 202 and r.json()["accepted"] == 60, r.text
    written, own = await layouts(settings)
    assert written == 0 and len(own) > 8
    async with api_client(settings) as c:  # upgraded
        ingestor = c._transport.app.state.ingestor  # type: ignore[attr-defined]
        states = JobStates(ingestor.runtime.redis, ingestor.keys, settings)
        assert await states.get([(pid, e["event_id"]) for e in old]) == [QUEUED] * 60  # found in the old layouts
        r = await c.post("/errors/batch", json={"events": old[:30] + batch(10, "7")})
        assert [x.get("duplicate", False) for x in r.json()["results"]] == [True] * 30 + [False] * 10, r.text
        assert (await layouts(settings))[0] == 10  # new ids go to the shared layout only
        assert await ingestor.calls.legacy.refresh()
        # the old metas gone (they expire 3 windows after their last generation began): no longer read
        redis = make_redis(settings, timeout=5)
        try:
            await redis.delete(*(k.dedup_meta for k in keys.all_shards))
        finally:
            await redis.aclose()
        assert not await ingestor.calls.legacy.refresh()
        r = await c.post("/errors/batch", json={"events": old[30:40]})
        assert r.json()["accepted"] == 10 and r.json()["duplicates"] == 0, r.text
        await asyncio.sleep(0)
    live, _, _ = await counted(settings)
    assert sum(live.values()) == 80


async def test_a_projects_quota_and_group_cap_are_exact_over_every_shard(make_settings: Any) -> None:
    # per minute 40 (refill: 0.67 events/s), cap 4 new groups an hour; the abuse tiers out of the way
    settings = make_settings(redis_shards=SHARDS, rate_limit_enabled=True, rate_limits="short:100000/s",
                             project_quota_per_second=0, project_quota_per_minute=40, project_new_groups_per_hour=4)
    pid = await prepare(settings)
    keys = Keys.from_settings(settings)
    events = batch(60, "8", groups=12)  # 12 groups: most of the 16 shards
    assert len({keys.shard_of(e["fingerprint"]) for e in events}) > 6
    async with api_client(settings) as c:
        r = await c.post("/errors/batch", json={"events": events})
        body = r.json()
    # a share per shard would admit ceil(40/16) = 3 per shard touched and 1 new group each: all of the
    # project's limit here, once (within the refill of a slow machine)
    assert 40 <= body["accepted"] <= 42 and body["accepted"] + body["rate_limited"] == 60, body
    # (the overflow group is counted in the shard of the event it took in: not `counted`'s one-shard check)
    redis = make_redis(settings, timeout=5)
    try:
        live: dict[str, int] = {}
        for k in keys.all_shards:
            for fp, n in (await redis.hgetall(k.live_counts)).items():  # type: ignore[misc]
                live[fp.decode()] = live.get(fp.decode(), 0) + int(n)
    finally:
        await redis.aclose()
    assert len(live) == 5 and overflow_fingerprint(pid) in live  # 4 groups of its own, then its overflow
    assert sum(live.values()) == body["accepted"]


async def test_queue_age_sees_the_global_tags_stream(make_settings: Any) -> None:
    # with several shards the global tag's stream carries tasks too (alert deliveries): an unacked one is
    # the queue's oldest as much as a shard's
    settings = make_settings(redis_shards=SHARDS)
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    try:
        secs, _ = await redis.time()
        await redis.xadd(keys.root.stream, {"data": b"{}"}, id=f"{(secs - 30) * 1000}-0")  # 30 s old
        assert 29 <= await _oldest_age(redis, keys) <= 60
    finally:
        await redis.aclose()
