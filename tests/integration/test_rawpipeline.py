"""core/rawpipeline.evalsha_many (through core/redis.evalsha_pipelined) against a real Redis: every reply in its
place, an error reply read whole, NOSCRIPT reloaded once, and a timed-out connection never reused half-read."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from core.rawpipeline import evalsha_many
from core.redis import PackedScript, evalsha_pipelined, make_redis

ECHO = """
redis.call('INCR', KEYS[1])
if ARGV[1] == 'boom' then return redis.error_reply('boom') end
if ARGV[1] == 'spin' then
  local t = redis.call('TIME'); local stop = t[1] * 1000000 + t[2] + 300000
  repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= stop
end
return {KEYS[1], ARGV[1], ARGV[2]}
"""


async def test_replies_in_order_with_an_error_in_between(make_settings: Any) -> None:
    redis = make_redis(make_settings(), timeout=5)
    script = redis.register_script(ECHO)
    await redis.script_flush()  # the first send answers NOSCRIPT for every call: loaded once, sent again
    calls: list[tuple[list[Any], list[Any]]] = [(["{a}:n"], ["one", 1]), (["{b}:n"], ["boom", 2]),
                                                (["{c}:n"], [b"three", 3.5])]
    replies = await evalsha_pipelined(redis, script, calls)  # type: ignore[arg-type]
    assert replies[0] == [b"{a}:n", b"one", b"1"] and replies[2] == [b"{c}:n", b"three", b"3.5"]
    assert isinstance(replies[1], ResponseError) and "boom" in str(replies[1])
    # each call ran exactly once (the NOSCRIPT round ran nothing), and the socket is still in step
    assert [int(await redis.get(k)) for k in ("{a}:n", "{b}:n", "{c}:n")] == [1, 1, 1]
    assert await redis.get("{a}:n") == b"1"
    await redis.aclose()


async def test_a_timed_out_batch_never_leaves_its_reply_to_the_next_caller(make_settings: Any) -> None:
    redis = make_redis(make_settings(), timeout=0.1, pool_size=1)  # one connection: a reused one would show
    script = redis.register_script(ECHO)
    await script(keys=["{x}:n"], args=["warm", 0])
    with pytest.raises(RedisTimeout):
        await evalsha_many(redis, script.sha, [(["{x}:n"], ["spin", 1])])
    await asyncio.sleep(0.5)  # "spin" has finished and its reply is on the wire by now
    # ... and must not be read as this call's answer
    later = await evalsha_many(redis, script.sha, [(["{y}:n"], ["after", 2])])
    assert later == [[b"{y}:n", b"after", b"2"]]
    await redis.aclose()


async def test_packed_script_answers_raises_and_reloads_like_a_script_call(make_settings: Any) -> None:
    """core/redis.PackedScript (the one-server ingest call): its reply, its error raised, NOSCRIPT reloaded."""
    redis = make_redis(make_settings(), timeout=5)
    packed = PackedScript(redis, redis.register_script(ECHO))  # type: ignore[arg-type]
    await redis.script_flush()
    keys = [f"{{p}}:k{i}" for i in range(40)]  # many keys, as a 4-section ingest call: packed from the cache
    assert await packed(keys=keys, args=["one", 1]) == [b"{p}:k0", b"one", b"1"]
    assert await packed(keys=keys, args=[b"two", 2.5]) == [b"{p}:k0", b"two", b"2.5"]
    with pytest.raises(ResponseError, match="boom"):
        await packed(keys=keys, args=["boom", 3])
    assert int(await redis.get("{p}:k0")) == 3  # each call ran once (the NOSCRIPT reply ran nothing)
    await redis.aclose()
