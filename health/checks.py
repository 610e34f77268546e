"""The individual health checks. Each returns a terminus-style entry {"status": "up"|"down", ...} and
never raises; each is bounded by its own short timeout so one slow dependency cannot stall a probe
(a kubelet gives a probe 1 s by default, deploy/k8s sets 2 s).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable
from typing import Any

import psutil
from sqlalchemy import text

from core.drain import Drain
from core.queue import queue_figures
from core.runtime import Runtime
from core.settings import DATA_DIR

Check = dict[str, Any]
REDIS_TIMEOUT = 0.5  # a healthy Redis answers a PING in < 1 ms
DB_TIMEOUT = 1.0  # a DB round trip, plus a pool connect when the pool is cold
_PROCESS = psutil.Process()


def _down(exc: BaseException) -> Check:
    if isinstance(exc, TimeoutError):
        return {"status": "down", "message": "timed out"}
    return {"status": "down", "message": str(exc) or type(exc).__name__}


async def _bounded(coro: Awaitable[Check], timeout: float) -> Check:
    try:
        return await asyncio.wait_for(coro, timeout)
    except Exception as exc:
        return _down(exc)


# --- liveness: this process only -----------------------------------------------------------------
async def event_loop(rt: Runtime) -> Check:
    """How long a callback waits for the loop now, and how long since the background watcher ran."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    start = loop.time()
    loop.call_soon(fut.set_result, None)
    await fut
    lag = loop.time() - start
    # watch() ticks every 1 s; 10x that without a tick means the loop is starved, not just busy.
    stale = time.monotonic() - rt.last_tick
    limit = rt.settings.liveness_max_lag
    ok = lag < limit and stale < max(10.0, limit)
    return {"status": "up" if ok else "down", "lag_ms": round(lag * 1000, 3), "last_tick_s": round(stale, 3)}


def memory(rt: Runtime) -> Check:
    rss_mb = _PROCESS.memory_info().rss / 1_048_576
    limit = rt.settings.memory_limit_mb
    return {"status": "up" if rss_mb < limit else "down", "rss_mb": round(rss_mb, 1), "limit_mb": limit}


# --- readiness: the drain decides; the shared dependencies below are reported, not required -----
async def redis(rt: Runtime) -> Check:
    async def ping() -> Check:
        await rt.redis.ping()
        return {"status": "up"}

    return await _bounded(ping(), REDIS_TIMEOUT)


def drain(state: Drain) -> Check:
    entry: Check = {"status": "down" if state.draining else "up", "state": state.state}
    if state.started is not None:
        entry["since_s"] = round(time.monotonic() - state.started, 3)
    return entry


async def queue(rt: Runtime) -> Check:
    """waiting (XLEN: XACK+XDEL keeps it equal to the backlog), pending (delivered, not acked),
    retrying (delayed retries), dead (dead letters), and the backpressure flag ingest acts on."""

    async def figures() -> Check:
        q = await queue_figures(rt.redis, rt.keys)  # summed over the key shards
        waiting = q.waiting
        s = rt.settings
        return {"status": "up" if waiting < s.queue_hard_limit else "down", "waiting": waiting,
                "pending": q.pending, "retrying": q.retrying, "dead": q.dead,
                "backpressure": waiting >= s.queue_soft_limit, "soft_limit": s.queue_soft_limit,
                "hard_limit": s.queue_hard_limit}

    return await _bounded(figures(), REDIS_TIMEOUT)


# --- reported, not required ----------------------------------------------------------------------
async def database(rt: Runtime) -> Check:
    async def ping() -> Check:
        start = time.perf_counter()
        async with rt.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return {"status": "up", "ms": round((time.perf_counter() - start) * 1000, 2)}

    return await _bounded(ping(), DB_TIMEOUT)


def disk(rt: Runtime) -> Check:
    path = DATA_DIR if DATA_DIR.exists() else os.getcwd()
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        return _down(exc)
    used = usage.used / usage.total if usage.total else 0.0
    return {"status": "up" if used < rt.settings.disk_max_used else "down", "path": str(path),
            "used": round(used, 4), "free_mb": usage.free // 1_048_576}
