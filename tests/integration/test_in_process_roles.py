"""Worker and scheduler run in process (handle_signals=False, as arq's Worker allows), against a real Redis
and SQLite: events sent through the API are stored and counted, both beat a heartbeat while they run, and
setting `stop` ends them cleanly with their heartbeats removed and the signal handlers left alone. Their stop
watchdog (workers/lifecycle.py) is armed in process too: cancelled by a stop that ends, firing on one that hangs."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import pytest

from core import heartbeat
from core.broker import FaultlineBroker, ensure_consumer_group
from core.keys import Keys
from core.redis import make_redis
from tests.integration.conftest import prepare
from tests.integration.test_worker import db_totals, ingest
from tests.waiting import wait_for
from workers import lifecycle
from workers.main import run_worker
from workers.scheduler import run_scheduler


async def test_worker_and_scheduler_run_in_process_and_stop_when_asked(make_settings: Any) -> None:
    settings = make_settings(sync_interval=0.5, write_batch_delay=0.01)
    await prepare(settings)
    before = signal.getsignal(signal.SIGTERM)
    stop = asyncio.Event()
    roles = [asyncio.create_task(run_worker(settings, "w-in-process", handle_signals=False, stop=stop)),
             asyncio.create_task(run_scheduler(settings, "s-in-process", handle_signals=False, stop=stop))]
    redis, keys = make_redis(settings, timeout=5), Keys(settings.key_prefix)
    try:
        async def both_beat() -> bool:
            return all([await heartbeat.read(redis, keys, "worker", "w-in-process") is not None,
                        await heartbeat.read(redis, keys, "scheduler", "s-in-process") is not None])

        await wait_for(both_beat, 20, "both heartbeats")
        await ingest(settings, 120, prefix="InProc")

        async def all_counted() -> bool:
            total, samples = await db_totals(settings)
            return total == 120 and samples > 0  # counts: the scheduler; samples: the worker

        await wait_for(all_counted, 30, "120 events stored and counted by the in-process roles")
        assert not any(task.done() for task in roles)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*roles), 30)  # no SystemExit: a clean stop
        assert await heartbeat.read(redis, keys, "worker", "w-in-process") is None
        assert await heartbeat.read(redis, keys, "scheduler", "s-in-process") is None
        assert signal.getsignal(signal.SIGTERM) == before
        loop = asyncio.get_running_loop()
        assert not loop.remove_signal_handler(signal.SIGTERM)  # none was installed on this loop

        async def watchdogs_gone() -> bool:  # armed at the stop, cancelled once it ended: pytest lives on
            return not [t for t in threading.enumerate() if t.name.startswith("stop watchdog")]

        await wait_for(watchdogs_gone, 5, "the stop watchdogs to be cancelled")
    finally:
        stop.set()
        for task in roles:
            task.cancel()
        await asyncio.gather(*roles, return_exceptions=True)
        await redis.aclose()


async def test_a_stopping_worker_reclaims_nothing(make_settings: Any) -> None:
    """A message a dead consumer left becomes reclaimable while the worker stops: it stays for the others
    (it was taken and then dropped by the stopping worker before: redelivered only after redeliver_after)."""
    settings = make_settings(redeliver_after=0.5)
    await prepare(settings)
    keys, redis = Keys.from_settings(settings), make_redis(settings, timeout=5)
    broker = FaultlineBroker(settings, consumer_name="w-stopping", keys=keys)
    await ensure_consumer_group(redis, keys)
    await redis.xadd(keys.stream, {"data": b"{}"})
    await redis.xreadgroup(keys.consumer_group, "ghost", {keys.stream: ">"}, count=1)  # the ghost dies with it
    listening = asyncio.create_task(anext(aiter(broker.listen())))
    await asyncio.sleep(0.2)  # the reader's first reclaim ran (too early to claim) and it blocks on a read
    broker.stop_reading()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(listening, 5)  # the generator ends at once, with no message
    await asyncio.sleep(1.5)  # past redeliver_after and the reclaim period: a running reader would claim it
    pending = await redis.xpending_range(keys.stream, keys.consumer_group, "-", "+", 10)
    assert [p["consumer"] for p in pending] == [b"ghost"]
    await broker.redis.aclose()
    await redis.aclose()


async def test_a_stop_that_hangs_is_ended_by_the_watchdog_in_process_too(make_settings: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The event loop blocked during the stop (a library call that never returns): the watchdog thread
    still fires, shutdown_timeout + STOP_MARGIN after the stop began (its os._exit replaced by a flag here).
    The loop is blocked right where the stop arms the watchdog: a test that blocked it from outside raced a
    stop that, on a quiet machine, ended (and cancelled the watchdog) before the block began."""
    settings = make_settings(shutdown_timeout=0.5)
    await prepare(settings)
    fired, armed = threading.Event(), threading.Event()
    monkeypatch.setattr(lifecycle, "STOP_MARGIN", 0.5)
    monkeypatch.setattr(lifecycle.Lifecycle, "_exit_hung", lambda self: fired.set())
    arm = lifecycle.Lifecycle._arm_watchdog

    def arm_then_hang(self: lifecycle.Lifecycle) -> None:
        first = self._watchdog is None
        arm(self)
        if first:  # the worker began its stop: now its event loop hangs, well past 0.5 + 0.5 s
            armed.set()
            assert not fired.is_set()
            time.sleep(3)  # the hang under test

    monkeypatch.setattr(lifecycle.Lifecycle, "_arm_watchdog", arm_then_hang)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, "w-hangs", handle_signals=False, stop=stop))
    redis, keys = make_redis(settings, timeout=5), Keys(settings.key_prefix)
    try:
        async def beats() -> bool:
            return await heartbeat.read(redis, keys, "worker", "w-hangs") is not None

        await wait_for(beats, 20, "the worker's heartbeat")
        stop.set()
        await asyncio.wait_for(worker, 30)
        assert armed.is_set() and fired.is_set()
    finally:
        stop.set()
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await redis.aclose()
