"""Liveness of background processes: each writes an expiring key; an exec probe checks it.

A worker whose event loop is stuck stops refreshing its key, and the key expires after `ttl`:
that, not "the process exists", is what `faultline worker-check` reports.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

from redis.asyncio import Redis

from core.keys import Keys

INTERVAL = 5.0
TTL = 20


def default_name() -> str:
    # In Kubernetes the pod name; locally `faultline up` sets FAULTLINE_NODE_NAME per process.
    return os.environ.get("FAULTLINE_NODE_NAME") or socket.gethostname()


async def beat_forever(redis: Redis, keys: Keys, role: str, name: str) -> None:
    key = keys.heartbeat(role, name)
    while True:
        try:
            await redis.set(key, f"{os.getpid()} {time.time():.3f}", ex=TTL)
        except Exception:  # Redis down: the key expires and the probe reports it, which is right
            pass
        await asyncio.sleep(INTERVAL)


async def is_alive(redis: Redis, keys: Keys, role: str, name: str) -> bool:
    return bool(await redis.exists(keys.heartbeat(role, name)))


async def stop(redis: Redis, keys: Keys, role: str, name: str) -> None:
    await redis.delete(keys.heartbeat(role, name))
