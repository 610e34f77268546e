"""The task queue's figures summed over every key shard's stream (probes, status, gauges, worker-check)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from core.keys import Keys


@dataclass(frozen=True)
class QueueFigures:
    waiting: int  # XLEN: XACK+XDEL keeps it equal to the backlog
    pending: int  # delivered to a worker, not acked yet
    retrying: int  # delayed retries
    dead: int  # dead letters


async def queue_depth(redis: Redis, keys: Keys) -> int:
    """Tasks queued or in flight, over every shard's stream: one pipeline (a cluster client splits it by
    node), so a probe costs one round trip and one connection per node whatever the shard count."""
    pipe = redis.pipeline(transaction=False)
    for k in keys.streams:
        pipe.xlen(k.stream)
    return sum(int(n) for n in await pipe.execute())


async def queue_figures(redis: Redis, keys: Keys) -> QueueFigures:
    """Summed over the shards, in one pipeline (see queue_depth). A shard whose group does not exist yet
    has nothing pending; any other error is raised."""
    pipe = redis.pipeline(transaction=False)
    for k in keys.streams:
        pipe.xlen(k.stream)
        pipe.xpending(k.stream, k.consumer_group)
        pipe.zcard(k.retries)
    pipe.llen(keys.dead_letters)
    replies = await pipe.execute(raise_on_error=False)
    for i, reply in enumerate(replies):
        if isinstance(reply, Exception) and i % 3 != 1:
            raise reply
    *shards, dead = replies
    return QueueFigures(sum(int(w) for w in shards[0::3]), sum(_pending(p) for p in shards[1::3]),
                        sum(int(r) for r in shards[2::3]), int(dead))


def _pending(reply: Any) -> int:
    return int(reply.get("pending", 0)) if isinstance(reply, dict) else 0
