"""The dedup sweep of the previous generation runs only once something there can have expired (real
redis-server): after a start part-way through a generation, every sweep used to read whole hashes for up to a
window and delete nothing (core/scripts/_dedup.lua, dedup_open)."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

from redis.asyncio import Redis

from api.ingest import Ingestor
from core.events import LogErrorIn
from core.runtime import Runtime
from faultline.services import RedisServer

TTL, BUCKETS = 3, 3  # 1-s buckets, 3-s generations: remembered 3..4 s


async def bucket(redis: Redis) -> tuple[int, float]:
    """(current bucket, seconds into it) on Redis's clock, the scripts' clock."""
    secs, micros = await redis.time()
    now = secs + micros / 1e6
    return math.floor(now), now - math.floor(now)


async def wait_for(redis: Redis, ready: Any) -> int:
    """Sleep until `ready(bucket)` holds early in a bucket (<= 0.4 s in); returns that bucket."""
    while True:
        cur, into = await bucket(redis)
        if ready(cur) and into <= 0.4:
            return cur
        await asyncio.sleep(max(0.005, 1.0 - into))


async def generation_ids(redis: Redis, gen: int) -> int:
    total = 0
    async for key in redis.scan_iter(match=f"*:dd:g{gen}:*", count=1000):
        total += int(await redis.hlen(key))  # type: ignore[misc]
    return total


async def hgetalls(redis: Redis) -> int:
    return int((await redis.info("commandstats")).get("cmdstat_hgetall", {}).get("calls", 0))


async def test_no_sweep_before_anything_can_expire_then_expired_ids_are_swept(make_settings: Any,
                                                                            own_redis: RedisServer) -> None:
    settings = make_settings(dedup_ttl=TTL, dedup_buckets=BUCKETS, queue_soft_limit=10_000_000,
                             redis_url=own_redis.url)
    rt = Runtime.open(settings)
    ingestor, redis = Ingestor(rt), rt.redis

    async def send(ids: list[str]) -> list[bool]:
        events = [LogErrorIn(message="m", fingerprint=f"g{n % 7}", event_id=i) for n, i in enumerate(ids)]
        out: list[bool] = []
        for k in range(0, len(events), 100):
            out += [a.duplicate for a in await ingestor.ingest(1, events[k:k + 100])]
        return out

    try:
        # a start part-way through generation G: its first ids are written in its second bucket
        first = await wait_for(redis, lambda b: b % BUCKETS == 1)
        gen = first // BUCKETS
        wave = [uuid.uuid4().hex for _ in range(600)]
        assert not any(await send(wave))
        # generation G+1, its first two buckets: every id of G is still inside the window, nothing to sweep
        await wait_for(redis, lambda b: b == first + 2)
        await redis.config_resetstat()
        for b in (first + 2, first + 3):
            await wait_for(redis, lambda c, b=b: c == b)
            assert not any(await send([uuid.uuid4().hex for _ in range(300)]))
            assert all(await send(wave[:100])), "ids of the generation before are still remembered"
            assert (await bucket(redis))[0] == b, "the test machine was too slow for 1-s buckets"
        assert await hgetalls(redis) == 0, "no sweep while nothing there could have expired"
        assert await generation_ids(redis, gen) == len(wave)
        # one bucket later the wave's bucket has left the window: lookups sweep it away
        await wait_for(redis, lambda c: c == first + 4)
        assert not any(await send([uuid.uuid4().hex for _ in range(600)]))
        assert await hgetalls(redis) > 0
        assert await generation_ids(redis, gen) < len(wave) // 2
    finally:
        await rt.close()
