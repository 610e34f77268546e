"""core/acks.py on a real redis-server: a flush acks and deletes every message it holds, several key shards'
streams in ONE script call on one server (core/scripts/ack.lua), one stream as the plain XACK + XDEL."""

from __future__ import annotations

import asyncio
from typing import Any

from core.acks import AckBatcher
from core.keys import Keys
from core.redis import make_redis, script_source


async def _queued(redis: Any, stream: str, n: int) -> list[str]:
    """n messages added to `stream` and delivered to a consumer of group 'workers' (so they are pending)."""
    await redis.xgroup_create(stream, "workers", id="0", mkstream=True)
    for i in range(n):
        await redis.xadd(stream, {"data": f"m{i}"})
    got = await redis.xreadgroup("workers", "c1", {stream: ">"}, count=n)
    return [mid.decode() for _, messages in got for mid, _ in messages]


async def _calls(redis: Any) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "xack", "xdel")}


async def test_several_streams_are_acked_in_one_script_call(make_settings: Any) -> None:
    settings = make_settings(redis_shards=4)
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    try:
        # 3 streams, 1200 ids in one (past the script's 1,000-id chunk), 1 and 2 in the others
        ids = {k.stream: await _queued(redis, k.stream, n) for k, n in zip(keys.all_shards, (1200, 1, 2), strict=False)}
        batcher = AckBatcher(redis, settings, "workers")
        await redis.script_load(script_source("ack"))  # else its first call is a NOSCRIPT reply, then the call
        before = await _calls(redis)
        # acks arriving within the linger are flushed together, whatever stream they are of
        await asyncio.gather(*(batcher.ack_many([(s, i) for i in part]) for s, v in ids.items()
                               for part in (v[:600], v[600:])))
        after = await _calls(redis)
        assert after["evalsha"] - before["evalsha"] == 1
        assert after["xack"] - before["xack"] == after["xdel"] - before["xdel"] == 4  # 2 chunks + 1 + 1
        for stream in ids:
            assert await redis.xlen(stream) == 0
            assert (await redis.xpending(stream, "workers"))["pending"] == 0
    finally:
        await redis.aclose()


async def test_one_stream_is_acked_without_a_script(make_settings: Any) -> None:
    settings = make_settings()
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    try:
        ids = await _queued(redis, keys.stream, 5)
        untouched = await _queued(redis, keys.shard(0).retries + "-other", 2)  # another stream, never acked
        before = await _calls(redis)
        await AckBatcher(redis, settings, "workers").ack_many([(keys.stream, i) for i in ids])
        after = await _calls(redis)
        assert (after["evalsha"] - before["evalsha"], after["xack"] - before["xack"]) == (0, 1)
        assert await redis.xlen(keys.stream) == 0
        assert await redis.xlen(keys.shard(0).retries + "-other") == len(untouched) == 2
    finally:
        await redis.aclose()
