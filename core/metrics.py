"""Prometheus metrics shared by every process, one histogram per layer as in the seed.

Under gunicorn/several processes PROMETHEUS_MULTIPROC_DIR is set before this module is imported
(faultline/ sets it), and /metrics aggregates the per-process files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from bisect import bisect_left
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from redis.asyncio import Redis

from core.keys import Keys
from core.queue import queue_depth

log = logging.getLogger("faultline.metrics")
_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

REDIS_SECONDS = Histogram("redis_operation_duration_seconds", "Redis call latency", ["op"], buckets=_FAST)
DB_SECONDS = Histogram("db_operation_duration_seconds", "Database call latency", ["op"], buckets=_FAST)
LOOP_LAG = Gauge("event_loop_lag_seconds", "How late the event loop ran a 0.25 s timer", ["process"],
                 multiprocess_mode="liveall")
QUEUE_DEPTH = Gauge("faultline_queue_depth", "Task stream entries not yet acknowledged",
                    multiprocess_mode="livemax")
RETRY_DEPTH = Gauge("faultline_retry_waiting", "Tasks waiting for a delayed retry", multiprocess_mode="livemax")
DEAD_LETTERS = Gauge("faultline_dead_letters", "Tasks in the dead-letter list", multiprocess_mode="livemax")
JOBS = Counter("faultline_jobs_total", "Task outcomes", ["outcome"])
EVENTS = Counter("faultline_events_total", "Ingested events by outcome", ["outcome"])
SYNC_SECONDS = Histogram("faultline_sync_duration_seconds", "Count sync duration")
# Transactions run again after the server rolled them back (reason: 1213, 1205 or "connection"): on Galera
# the 1213s are the certification conflicts between writers on different nodes (core/db/rerun.py).
DB_RERUNS = Counter("faultline_db_reruns_total", "Transactions run again after a rollback", ["op", "reason"])
SYNCED_EVENTS = Counter("faultline_synced_events_total", "Event counts moved from Redis to the DB")
# Under gunicorn's multiprocess mode the default process_* collector is not aggregated, so every process
# reports its own RSS here (read once a second by watch_loop_lag) for the "memory per process" panel.
PROCESS_RSS = Gauge("faultline_process_resident_memory_bytes", "Resident memory of this process", ["process"],
                    multiprocess_mode="liveall")
# Events refused by a project's quota (reason="rate_limited"): per project in Redis and GET /api/projects.
EVENTS_DROPPED = Counter("faultline_events_dropped_total", "Events not counted because of a limit", ["reason"])
QUEUE_AGE = Gauge("faultline_queue_oldest_age_seconds", "Age of the oldest unacknowledged task",
                  multiprocess_mode="livemax")

# Sentry envelope items by type: events go through the pipeline; the other known types are counted, not stored.
SENTRY_ITEMS = Counter("faultline_sentry_items_total", "Sentry envelope items received, by item type", ["type"])

class Deferred:
    """Counter increments and histogram observations of the ingest path, written to their values at most
    FLUSH_S later, once per child, instead of once each.

    Why: under PROMETHEUS_MULTIPROC_DIR every write of a value is a lock, a getpid() and an mmap write
    (~2-3 us), and a request made four of them (request count, latency sum and bucket, accepted events):
    ~6 % of an API process's CPU per request (py-spy, in-process driver). Here a request adds to two dicts;
    the flush (a loop timer, and before an in-process /metrics render, and at shutdown) writes the sums.
    A scrape may see a request up to FLUSH_S late; a crash loses at most FLUSH_S of these counts (not events).
    Histograms: the child's own sum and bucket values (prometheus_client 0.26's, pinned by
    tests/unit/test_http_metrics.py), the bucket found as its `observe` finds it (first bound >= value).
    """

    FLUSH_S = 0.05

    def __init__(self) -> None:
        self._counts: dict[Any, float] = {}
        self._observed: dict[Any, list[Any]] = {}  # child -> [sum, [count per bucket]]
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop whose timer will flush

    def inc(self, child: Any, amount: float = 1) -> None:
        self._counts[child] = self._counts.get(child, 0) + amount
        self._arm()

    def observe(self, child: Any, value: float) -> None:
        found = self._observed.get(child)
        if found is None:
            found = self._observed[child] = [0.0, [0] * len(child._upper_bounds)]
        found[0] += value
        found[1][bisect_left(child._upper_bounds, value)] += 1
        self._arm()

    def _arm(self) -> None:
        loop = asyncio._get_running_loop()
        if loop is None:  # no event loop here: write at once
            self.flush()
        elif loop is not self._loop:  # not armed, or armed on a loop that has gone since (tests run many)
            self._loop = loop
            loop.call_later(self.FLUSH_S, self.flush)

    def flush(self) -> None:
        self._loop = None
        counts, self._counts = self._counts, {}
        observed, self._observed = self._observed, {}
        for child, amount in counts.items():
            child.inc(amount)
        for child, (total, buckets) in observed.items():
            child._sum.inc(total)
            for bucket, n in zip(child._buckets, buckets, strict=True):
                if n:
                    bucket.inc(n)


DEFERRED = Deferred()


@contextmanager
def timed(hist: Histogram, op: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        hist.labels(op).observe(time.perf_counter() - start)


def render() -> tuple[bytes, str]:
    DEFERRED.flush()  # this process's deferred writes first (under gunicorn the master renders: see Deferred)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def serve_metrics(port: int | None, host: str = "127.0.0.1") -> None:
    """Workers and schedulers serve no HTTP: expose their /metrics on a side port for Prometheus."""
    if not port:
        return
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        start_http_server(port, addr=host, registry=registry)
    else:
        start_http_server(port, addr=host)


async def watch_loop_lag(interval: float = 0.25) -> None:
    """Runs forever: the lateness of a timer is the time the loop was busy with something else."""
    import psutil

    gauge = LOOP_LAG.labels(str(os.getpid()))
    rss = PROCESS_RSS.labels(str(os.getpid()))
    proc = psutil.Process()
    loop = asyncio.get_running_loop()
    tick = 0
    while True:
        if tick % 4 == 0:  # RSS once a second: ~20 us of psutil per read
            rss.set(proc.memory_info().rss)
        tick += 1
        start = loop.time()
        await asyncio.sleep(interval)
        gauge.set(max(0.0, loop.time() - start - interval))


async def watch_queue_depth(redis: Redis, keys: Keys, every: float = 1.0) -> None:
    """Runs forever: this node's copy of the queue depth (summed over the key shards) for /metrics (the
    workers publish theirs too, so a scrape of either kind of process shows it); a Redis error leaves the
    last figure until the next tick."""
    while True:
        try:
            QUEUE_DEPTH.set(await queue_depth(redis, keys))
        except Exception as exc:
            log.debug("queue depth: %s", exc)
        await asyncio.sleep(every)
