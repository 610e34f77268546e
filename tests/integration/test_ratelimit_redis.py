"""The Redis sliding-window-log limiter against a real redis-server: exact, atomic, Redis-time based."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from core.keys import Keys
from core.ratelimit.limiter import LimiterUnavailable
from core.ratelimit.redis_limiter import RedisLimiter
from core.ratelimit.tiers import Tier, parse_tiers
from core.redis import make_redis
from faultline.services import free_port


@pytest.fixture
def limiter_pair(make_settings: Callable[..., Any]) -> Any:
    """Two limiters with separate clients: two API processes sharing one Redis."""
    settings = make_settings()
    keys = Keys.from_settings(settings)
    clients = [make_redis(settings, timeout=5), make_redis(settings, timeout=5)]
    return [RedisLimiter(c, keys) for c in clients], keys, clients[0]


async def test_concurrent_hits_from_two_processes_admit_exactly_the_limit(limiter_pair: Any) -> None:
    (a, b), keys, redis = limiter_pair
    tiers = parse_tiers("burst:50/30s,long:1000/h")
    results = await asyncio.gather(*[(a if i % 2 else b).hit("ip:1.2.3.4", tiers) for i in range(300)])
    assert sum(d.allowed for d in results) == 50
    for tier in tiers:
        key = keys.ratelimit(tier.key, "ip:1.2.3.4")
        assert key.startswith("{" + keys.prefix + "}:")  # hash tag: every key of a call in one cluster slot
        assert await redis.zcard(key) == 50  # unique members: no two admitted requests collided
        assert 0 < await redis.pttl(key) <= tier.window_ms
    refused = [d for d in results if not d.allowed]
    assert {d.tier.name for d in refused} == {"burst"} and all(d.remaining == 0 for d in refused)


async def test_refused_requests_are_not_logged_and_retry_after_is_exact(limiter_pair: Any) -> None:
    (lim, _), keys, redis = limiter_pair
    tiers = (Tier("short", 3, 1000),)
    key = keys.ratelimit("short", "k:abc")
    admitted = [await lim.hit("k:abc", tiers) for _ in range(3)]
    assert [d.remaining for d in admitted] == [2, 1, 0]
    oldest = await redis.zrange(key, 0, 0, withscores=True)
    for _ in range(20):
        refused = await lim.hit("k:abc", tiers)
        assert not refused.allowed
    assert await redis.zcard(key) == 3 and await redis.zrange(key, 0, 0, withscores=True) == oldest
    # exact: the oldest entry (Redis µs) + window - Redis now at the refusal
    assert refused.wait_us == int(oldest[0][1]) + 1_000_000 - refused.now_us
    assert refused.retry_after_s == 1 and 0 < refused.retry_after_ms <= 1000
    await asyncio.sleep(max(refused.retry_after_ms - 150, 0) / 1000)
    assert not (await lim.hit("k:abc", tiers)).allowed  # 150 ms early: still refused
    again = await lim.hit("k:abc", tiers)
    await asyncio.sleep(again.retry_after_ms / 1000 + 0.002)
    assert (await lim.hit("k:abc", tiers)).allowed  # waited exactly as told: admitted


async def test_reported_tier_is_the_one_that_frees_last(limiter_pair: Any) -> None:
    (lim, _), _, _ = limiter_pair
    tiers = parse_tiers("short:2/200ms,medium:3/1m")
    assert (await lim.hit("c", tiers)).tier.name == "short"
    await lim.hit("c", tiers)
    await asyncio.sleep(0.25)
    third = await lim.hit("c", tiers)
    assert third.allowed and third.tier.name == "medium" and third.remaining == 0
    d = await lim.hit("c", tiers)
    assert not d.allowed and d.tier.name == "medium" and 58_000 < d.retry_after_ms <= 60_000
    assert d.retry_after_s == -(-d.retry_after_ms // 1000)


async def test_clients_do_not_share_windows(limiter_pair: Any) -> None:
    (lim, _), _, _ = limiter_pair
    tiers = (Tier("short", 2, 10_000),)
    assert [(await lim.hit("ip:10.0.0.1", tiers)).allowed for _ in range(3)] == [True, True, False]
    assert [(await lim.hit("ip:10.0.0.2", tiers)).allowed for _ in range(3)] == [True, True, False]


async def test_unreachable_redis_raises_limiter_unavailable(make_settings: Callable[..., Any]) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    redis = make_redis(settings)
    lim = RedisLimiter(redis, Keys.from_settings(settings))
    with pytest.raises(LimiterUnavailable):
        await lim.hit("c", (Tier("short", 1, 1000),))
    await redis.aclose()


async def seed_pipeline_hit(redis: Any, key: str, limit: int, window_ms: int, node_now_ms: int,
                            n: int) -> bool:
    """The seed's NestJS guard (section 3.2), verbatim in redis-py: node clock, add before counting."""
    pipe = redis.pipeline()
    pipe.zremrangebyscore(key, 0, node_now_ms - window_ms)
    pipe.zadd(key, {f"{node_now_ms}:{n}": node_now_ms})
    pipe.zcard(key)
    pipe.pexpire(key, window_ms)
    count = (await pipe.execute())[2]
    return bool(count <= limit)


async def test_the_seeds_pipeline_breaks_where_ours_holds(limiter_pair: Any) -> None:
    """Control for the seed guard's two flaws (each node's own clock; refused requests counted too), so the
    tests above are known to be able to fail."""
    (ours, _), keys, redis = limiter_pair
    skews_ms = (-37_000, 0, 53_000)  # three nodes' clocks, as in tests/e2e/test_ratelimit_edge.py
    seed_admitted = 0
    for i in range(30):  # 30 requests within a few ms, spread over the three nodes, limit 10 per 10 s
        now_ms = time.time_ns() // 1_000_000 + skews_ms[i % 3]
        seed_admitted += await seed_pipeline_hit(redis, keys.ratelimit("seed", "c"), 10, 10_000, now_ms, i)
    tiers = (Tier("short", 10, 10_000),)
    ours_admitted = sum([(await ours.hit("c", tiers)).allowed for _ in range(30)])
    assert ours_admitted == 10
    assert seed_admitted > 10  # the +53 s node prunes the other nodes' entries: the window leaks

    # lockout: the seed adds refused requests, so a client retrying faster than the window never gets in
    key = keys.ratelimit("seed-lock", "c")
    now_ms = time.time_ns() // 1_000_000
    results = [await seed_pipeline_hit(redis, key, 2, 1000, now_ms + 100 * i, i) for i in range(30)]
    assert results[:2] == [True, True] and not any(results[2:])  # 2.8 s of retries, refused all along


async def test_script_flush_is_survived_by_single_and_batched_calls(limiter_pair: Any) -> None:
    """Concurrent calls share one pipeline; after SCRIPT FLUSH (a Redis restart) both paths reload."""
    (lim, _), keys, redis = limiter_pair
    tiers = (Tier("short", 40, 30_000),)
    await lim.hit("c", tiers)
    await redis.script_flush()
    assert (await lim.hit("c", tiers)).allowed  # single call: redis-py's EVALSHA fallback
    await redis.script_flush()
    results = await asyncio.gather(*[lim.hit("c", tiers) for _ in range(60)])  # batched
    assert sum(d.allowed for d in results) == 38
    assert await redis.zcard(keys.ratelimit("short", "c")) == 40  # nothing logged twice
