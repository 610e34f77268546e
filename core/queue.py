"""The task queue's figures summed over every key shard's stream (probes, status, gauges, worker-check)."""

from __future__ import annotations

import asyncio
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
    """Tasks queued or in flight, over every shard's stream (one call per shard, concurrently)."""
    return sum(int(n) for n in await asyncio.gather(*(redis.xlen(s.stream) for s in keys.all_shards)))


async def queue_figures(redis: Redis, keys: Keys) -> QueueFigures:
    """One small pipeline per shard (each shard is one slot), concurrently. A shard whose group does not
    exist yet has nothing pending; any other error is raised."""

    async def shard(k: Keys) -> tuple[int, int, int]:
        pipe = redis.pipeline(transaction=False)
        pipe.xlen(k.stream)
        pipe.xpending(k.stream, k.consumer_group)
        pipe.zcard(k.retries)
        waiting, pending, retrying = await pipe.execute(raise_on_error=False)
        if isinstance(waiting, Exception):
            raise waiting
        if isinstance(retrying, Exception):
            raise retrying
        return int(waiting), 0 if isinstance(pending, Exception) else _pending(pending), int(retrying)

    parts, dead = await asyncio.gather(asyncio.gather(*(shard(k) for k in keys.all_shards)),
                                       redis.llen(keys.dead_letters))  # type: ignore[arg-type]
    return QueueFigures(sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts), int(dead))


def _pending(reply: Any) -> int:
    return int(reply.get("pending", 0)) if isinstance(reply, dict) else 0
