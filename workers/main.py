"""A worker process: consume the task stream, write batches, pump retries, beat a heartbeat.

SIGTERM: stop fetching, let running tasks finish (bounded by shutdown_timeout), leave everything else
unacked in the stream for another worker, exit 0. Every loop here rides out Redis/DB outages with backoff
(core/backoff.py); one that ends anyway ends the process with exit 1: never alive-but-idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import Any

from redis.asyncio import Redis
from taskiq.receiver import Receiver

from core import heartbeat, metrics
from core.backoff import Backoff
from core.broker import FaultlineBroker
from core.db.migrate import SchemaTooOld, require_current_schema
from core.keys import Keys
from core.queue import queue_figures
from core.retry import OutcomeMiddleware, RetryMiddleware, pump_all_retries
from core.settings import Settings
from core.taskstop import cancel_and_wait
from workers import tasks
from workers.alerts import Evaluator
from workers.deliveries import Deliveries
from workers.lifecycle import Lifecycle
from workers.persist import PersistRoute
from workers.thresholds import scan_forever
from workers.writer import BatchWriter

log = logging.getLogger("faultline.worker")


GAUGES_EVERY = 1.0  # s: queue gauges are scraped every 15 s or so; 5 times a second cost 3 commands per shard


async def _pump_forever(settings: Settings, keys: Keys, redis: Redis, progress: heartbeat.Progress) -> None:
    """Move due retries back onto the stream, and publish the queue gauges."""
    backoff = Backoff.for_loop("retry pump", log, settings)
    gauges_at = 0.0
    while True:
        try:
            moved, next_due = await pump_all_retries(redis, keys)
            if time.monotonic() >= gauges_at:
                gauges_at = time.monotonic() + GAUGES_EVERY
                q = await queue_figures(redis, keys)
                metrics.QUEUE_DEPTH.set(q.waiting)
                metrics.RETRY_DEPTH.set(q.retrying)
                metrics.DEAD_LETTERS.set(q.dead)
                metrics.QUEUE_AGE.set(await _oldest_age(redis, keys))
        except Exception as exc:
            progress.errors += 1
            gauges_at = 0.0
            await backoff.failed(exc)
            continue
        backoff.ok()
        # wake when the next retry is due (not up to 0.2 s late): retry delays stay the ones core/retry.py chose
        await asyncio.sleep(0.05 if moved else min(0.2, next_due if next_due is not None else 0.2))


async def _start_broker(broker: FaultlineBroker, settings: Settings, finish: asyncio.Event) -> None:
    """Create the consumer group, waiting with backoff while Redis is unreachable (a worker started during
    a Redis restart comes up by itself instead of crash-looping); past loop_give_up_after, exit 1."""
    backoff = Backoff.for_loop("worker start-up", log, settings)
    while not finish.is_set():
        try:
            await broker.startup()
        except Exception as exc:
            broker.progress.mark_attempt()  # waiting for Redis, not stuck (core/liveness.py)
            await backoff.failed(exc)
            continue
        backoff.ok()
        return


async def _oldest_age(redis: Redis, keys: Keys) -> float:
    """Seconds since the oldest unacked task of any stream was enqueued (stream ids: Redis-clock ms). One
    pipeline for every stream's first entry (a cluster client splits it by node), then Redis's clock. Every
    stream workers read: with several shards the global tag's holds the alert deliveries' tasks."""
    pipe = redis.pipeline(transaction=False)
    for shard in keys.streams:
        pipe.xrange(shard.stream, count=1)
    firsts: list[Any] = await pipe.execute()
    enqueued = [int(first[0][0].split(b"-")[0]) for first in firsts if first]
    if not enqueued:
        return 0.0
    secs, micros = await redis.time()
    return max(0.0, secs + micros / 1e6 - min(enqueued) / 1000)


async def run_worker(settings: Settings, name: str, *, handle_signals: bool = True,
                     stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM, or until `stop` is set (then return: exit 0). If the receiver or any background
    loop ends by itself, the worker can no longer do its job: raise SystemExit(1) so the supervisor
    restarts the process. handle_signals=False: run in process, ended by `stop` (workers/lifecycle.py)."""
    async with Lifecycle(settings, "worker", name, pool_size=64, handle_signals=handle_signals,
                         stop=stop) as life:
        broken = await _consume(life, settings, name)
    if broken:
        raise SystemExit(1)


async def _consume(life: Lifecycle, settings: Settings, name: str) -> bool:
    """The worker's own work inside its lifecycle; True when a loop ended by itself."""
    redis, keys, finish = life.redis, life.keys, life.stop
    try:  # writing events into an older schema would fail every batch: refuse to start instead
        await require_current_schema(life.engine, log)
    except SchemaTooOld:
        return True
    broker = FaultlineBroker(settings, consumer_name=name, keys=keys)
    progress = broker.progress
    writer = BatchWriter(settings, life.engine, redis, progress=progress, keys=keys)
    retry = RetryMiddleware(settings, redis, keys)
    broker.add_middlewares(retry, OutcomeMiddleware(progress))
    # persist tasks skip taskiq's per-message receiver (workers/persist.py); the other tasks go through it
    route = broker.direct = PersistRoute(broker, writer, retry, progress, settings.worker_concurrency)
    deliveries = Deliveries(settings, life.engine, redis)
    tasks.register(broker, writer, deliveries)
    evaluator = Evaluator(settings, redis, life.engine, name)
    broker.is_worker_process = True
    # taskiq logs a traceback per failed task: thousands of lines in a DB outage. Failures are logged by
    # core/retry.py (per attempt for bad data, dead letters) and the writer (once per DB outage) instead.
    logging.getLogger("taskiq.receiver.receiver").setLevel(logging.CRITICAL)
    # before the broker start: a worker waiting for Redis is alive (core/liveness.py), not stuck
    beat = life.beat(progress)
    await _start_broker(broker, settings, finish)
    if finish.is_set():  # SIGTERM while Redis was still unreachable
        return False
    writer.start()
    alerting = [life.spawn(evaluator.run(), "alert evaluator"),
                life.spawn(scan_forever(evaluator, settings), "threshold scan")]
    background = [beat, life.spawn(_pump_forever(settings, keys, redis, progress), "retry pump"), *alerting]
    receiver = Receiver(broker, max_async_tasks=settings.worker_concurrency, run_startup=False,
                        wait_tasks_timeout=settings.shutdown_timeout)
    log.info("worker %s consuming %s (%d shards)", name, keys.stream, keys.shards)
    if life.handle_signals:  # our own process (a host process, e.g. pytest, keeps its collector as it is)
        # The ~200,000 objects of the imports and the start-up into the permanent generation: the cyclic
        # collector stops re-walking them on every collection (as the API processes do,
        # faultline/gunicorn_conf.py). py-spy put ~10 % of a busy worker on whichever line allocated when a
        # collection fell due (loadtest/worker_cpu.py).
        gc.freeze()
    listener = asyncio.create_task(receiver.listen(finish), name="receiver")
    finishing = asyncio.create_task(finish.wait())
    watched = [listener, *background, *writer.tasks()]
    await asyncio.wait([finishing, *watched], return_when=asyncio.FIRST_COMPLETED)
    broken = [t for t in watched if t.done()] if not finish.is_set() or life.failed else []
    for task in broken:
        err = None if task.cancelled() else task.exception()
        log.error("worker %s: %s ended by itself (%r): exiting non-zero so the supervisor restarts it",
                  name, task.get_name(), err)
    # stops the prefetcher if the receiver is still running; the stop below is bounded step by step, and
    # should one step hang anyway, Lifecycle's watchdog (armed here) ends the process non-zero
    life.stopping()
    broker.stop_reading()  # and the shard readers at once: no reclaim or read after SIGTERM
    if not broken:
        log.info("worker %s: stopping, finishing running tasks", name)
    try:
        await asyncio.wait_for(asyncio.gather(listener, route.drain()), settings.shutdown_timeout)
    except (TimeoutError, asyncio.CancelledError):
        log.warning("worker %s: tasks still running after %.0fs; they will be redelivered",
                    name, settings.shutdown_timeout)
    except Exception as exc:
        log.warning("worker %s: receiver ended with %s", name, exc)
    finishing.cancel()
    await cancel_and_wait(alerting)  # before the deliveries they feed close
    await route.stop()  # whatever did not finish in time stays unacked, for another worker
    await writer.stop()
    await deliveries.close()
    with contextlib.suppress(Exception):
        await broker.shutdown()
    return bool(broken)
