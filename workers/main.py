"""A worker process: consume the task stream, write batches, pump retries, beat a heartbeat.

SIGTERM: stop fetching, let running tasks finish (bounded by shutdown_timeout), leave everything else
unacked in the stream for another worker, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from taskiq.receiver import Receiver

from core import heartbeat, metrics
from core.broker import FaultlineBroker
from core.db.engine import make_engine
from core.keys import Keys
from core.redis import make_redis
from core.retry import OutcomeMiddleware, RetryMiddleware, pump_retries
from core.settings import Settings
from workers import tasks
from workers.writer import AfterCommit, BatchWriter

log = logging.getLogger("faultline.worker")


async def _pump_forever(settings: Settings, keys: Keys, redis: object) -> None:
    while True:
        try:
            moved = await pump_retries(redis, keys)  # type: ignore[arg-type]
            depth = await redis.xlen(keys.stream)  # type: ignore[attr-defined]
            metrics.QUEUE_DEPTH.set(depth)
            metrics.RETRY_DEPTH.set(await redis.zcard(keys.retries))  # type: ignore[attr-defined]
            metrics.DEAD_LETTERS.set(await redis.llen(keys.dead_letters))  # type: ignore[attr-defined]
            metrics.QUEUE_AGE.set(await _oldest_age(redis, keys))
        except Exception as exc:
            log.warning("retry pump: %s", exc)
            moved = 0
        await asyncio.sleep(0.05 if moved else 0.2)


async def _oldest_age(redis: object, keys: Keys) -> float:
    """Seconds since the oldest unacked task was enqueued (stream ids are Redis-clock milliseconds)."""
    first = await redis.xrange(keys.stream, count=1)  # type: ignore[attr-defined]
    if not first:
        return 0.0
    secs, micros = await redis.time()  # type: ignore[attr-defined]
    enqueued_ms = int(first[0][0].split(b"-")[0])
    return max(0.0, secs + micros / 1e6 - enqueued_ms / 1000)


async def run_worker(settings: Settings, name: str, after_commit: AfterCommit | None = None) -> None:
    keys = Keys(settings.key_prefix)
    redis = make_redis(settings, pool_size=64, timeout=5.0)
    engine = make_engine(settings)
    writer = BatchWriter(settings, engine, redis, after_commit)
    broker = FaultlineBroker(settings, consumer_name=name)
    broker.add_middlewares(RetryMiddleware(settings, redis), OutcomeMiddleware())
    tasks.register(broker, writer)
    broker.is_worker_process = True

    finish = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, finish.set)

    metrics.serve_metrics(settings.metrics_port, settings.metrics_host)
    await broker.startup()
    writer.start()
    background = [
        asyncio.create_task(heartbeat.beat_forever(redis, keys, "worker", name)),
        asyncio.create_task(_pump_forever(settings, keys, redis)),
        asyncio.create_task(metrics.watch_loop_lag()),
    ]
    receiver = Receiver(broker, max_async_tasks=settings.worker_concurrency, run_startup=False,
                        wait_tasks_timeout=settings.shutdown_timeout)
    log.info("worker %s consuming %s", name, keys.stream)
    listener = asyncio.create_task(receiver.listen(finish))
    await finish.wait()
    log.info("worker %s: SIGTERM, finishing running tasks", name)
    try:
        await asyncio.wait_for(listener, settings.shutdown_timeout)
    except (TimeoutError, asyncio.CancelledError):
        log.warning("worker %s: tasks still running after %.0fs; they will be redelivered",
                    name, settings.shutdown_timeout)
    except Exception as exc:
        log.warning("worker %s: receiver ended with %s", name, exc)
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    await writer.stop()
    with contextlib.suppress(Exception):
        await heartbeat.stop(redis, keys, "worker", name)
    with contextlib.suppress(Exception):
        await broker.shutdown()
    await redis.aclose()
    await engine.dispose()
    log.info("worker %s stopped", name)
