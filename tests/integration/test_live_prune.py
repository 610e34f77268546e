"""Idle groups leave the live hashes and the feed; the DB keeps them and totals stay exact (real Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

from core.feed import FeedCoalescer
from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings
from tests.integration.conftest import api_client, prepare
from tests.integration.test_ingest_api import drain_queue
from workers.prune import prune_idle_groups, rebase_new_groups


async def fields(settings: Settings) -> dict[str, dict[str, int]]:
    """Field -> value (ints) of each per-group structure, by name."""
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    out: dict[str, dict[str, int]] = {}
    try:
        for name in ("live_counts", "feed_emitted", "feed_last_seen", "feed_groups", "pending_counts"):
            raw = await redis.hgetall(getattr(keys, name))  # type: ignore[misc]
            out[name] = {k.decode(): (0 if name == "feed_groups" else int(float(v))) for k, v in raw.items()
                         if b"@" not in k}  # the pending hash's hour buckets are not per-group structures
    finally:
        await redis.aclose()
    return out


async def post(c: Any, group: str, n: int) -> str:
    r = await c.post("/errors/batch", json={"events": [{"message": "E", "fingerprint": group}] * n})
    assert r.status_code == 202 and r.json()["accepted"] == n
    return str(r.json()["results"][0]["fingerprint"])


async def test_idle_groups_are_pruned_db_keeps_them_and_totals_stay_exact(make_settings: Any) -> None:
    settings = make_settings(live_group_idle=1.0)
    await prepare(settings)
    redis = make_redis(settings, timeout=5)
    keys = Keys.from_settings(settings)
    feed = FeedCoalescer(settings, redis, "test-feed")
    async with api_client(settings) as c:
        a = await post(c, "busy", 5)
        b = await post(c, "quiet", 3)
        await feed.tick()
        assert await drain_queue(settings) == 8
        assert await rebase_new_groups(redis, feed_engine(c), keys) == 0  # new groups: already exact
        await asyncio.sleep(1.3)
        await post(c, "busy", 1)  # keeps "busy" active
        await feed.tick()
        assert await prune_idle_groups(redis, keys, settings) == 1
        f = await fields(settings)
        for name in ("live_counts", "feed_emitted", "feed_last_seen", "feed_groups"):
            assert a in f[name] and b not in f[name], name
        index = {m.decode() for m in await redis.smembers(keys.feed_index(1))}  # type: ignore[misc]
        assert a in index and b not in index  # the project's feed index follows
        assert f["pending_counts"] == {a: 1}  # never pruned: the sync flushes it
        db = {g["fingerprint"]: g["count"] for g in (await c.get("/errors")).json()["items"]}
        assert db == {a: 6, b: 3}  # the DB keeps the pruned group (the read API adds a's pending 1)

        await post(c, "quiet", 2)  # back: starts from 1 in the live hash ...
        assert (await fields(settings))["live_counts"][b] == 2
        await drain_queue(settings)  # (re-reads the whole stream: nothing acks here; the sync is what counts)
        assert await rebase_new_groups(redis, feed_engine(c), keys) == 1  # ... and is rebased on the DB's
        live = (await fields(settings))["live_counts"]
        db = {g["fingerprint"]: g["count"] for g in (await c.get("/errors")).json()["items"]}
        assert db == {a: 6, b: 5} and live == db
        await post(c, "quiet", 1)  # the feed then reports the exact total with the real delta
        await feed.tick()
        assert (await fields(settings))["feed_emitted"][b] == 6
    await redis.aclose()


def feed_engine(c: Any) -> Any:
    return c._transport.app.state.runtime.engine


async def test_pruning_is_done_in_bounded_steps(make_settings: Any) -> None:
    settings = make_settings(live_group_idle=1.0, live_prune_step=100)
    await prepare(settings)
    redis = make_redis(settings, timeout=5)
    keys = Keys.from_settings(settings)
    async with api_client(settings) as c:
        for start in (0, 600):  # 1,200 > hash-max-listpack-entries: a hashtable, scanned in steps
            r = await c.post("/errors/batch", json={"events": [{"message": "E", "fingerprint": f"g{i}"}
                                                               for i in range(start, start + 600)]})
            assert r.json()["accepted"] == 600
        await FeedCoalescer(settings, redis, "t").tick()
        await asyncio.sleep(1.2)
        runs = []
        while len(runs) < 20 and await redis.hlen(keys.live_counts):  # type: ignore[misc]
            runs.append(await prune_idle_groups(redis, keys, settings))
        assert max(runs) < 400 and len(runs) >= 4, runs  # each run looks at ~100 fields
        assert sum(runs) == 1200 and await redis.hlen(keys.feed_groups) == 0  # type: ignore[misc]
    await redis.aclose()
