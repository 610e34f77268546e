"""The process lifecycle a worker and a scheduler share: signals -> metrics -> heartbeat -> teardown.

    async with Lifecycle(settings, "worker", name, pool_size=64) as life:
        life.beat(progress)          # heartbeat (core/heartbeat.py) until the end
        ...                          # the role's own work, until life.stop is set
    # teardown: background tasks cancelled, heartbeat removed, pools closed

SIGTERM/SIGINT set `stop`. handle_signals=False leaves the signals alone, so a test (or any host process)
runs the role in process and ends it by setting `stop` itself, as arq's Worker(handle_signals=False) does.

The stop watchdog is here and only here: once `stop` is set (or the role calls stopping()), a thread ends the
process with exit 1 if the stop is still going shutdown_timeout + STOP_MARGIN s later (a library call that
never returns, a blocked event loop): a hung stop must not look alive. In process too (the role's host would
hang with it); a stop that completes cancels it there, so the host is never ended later.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from core import heartbeat, metrics
from core.db.engine import make_engine
from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings
from core.taskstop import cancel_and_wait

log = logging.getLogger("faultline.lifecycle")
SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A stop that takes longer than this logs what every task is awaiting (and, later, every thread's stack, in
# case the event loop itself is stuck): a process SIGKILLed for a slow stop leaves the reason in its log.
STOP_REPORT_AFTER = 5.0
STOP_MARGIN = 10.0  # s past shutdown_timeout before a stop that hangs ends the process (exit 1) by a thread


def awaiting(task: asyncio.Task[Any]) -> str:
    """Where a suspended task waits: its await chain, outermost first (Task.get_stack shows one frame)."""
    where: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None and len(where) < 40:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            where.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " <- ".join(reversed(where)) or repr(task)


class Lifecycle:
    def __init__(self, settings: Settings, role: str, name: str, *, pool_size: int,
                 handle_signals: bool = True, stop: asyncio.Event | None = None) -> None:
        self.settings, self.role, self.name = settings, role, name
        self.handle_signals = handle_signals
        self.stop = stop or asyncio.Event()
        self.keys = Keys.from_settings(settings)
        # calls fail within 5 s rather than hang; 3 retries ride out a reconnect
        # a worker reads and a sync runs every key shard concurrently: a connection or two each (the cluster
        # client has no blocking pool)
        self.redis: Redis = make_redis(settings, pool_size=pool_size + 2 * self.keys.shards, timeout=5.0, retries=3)
        self.engine: AsyncEngine = make_engine(settings)
        self.background: list[asyncio.Task[None]] = []
        self.heartbeat: asyncio.Task[None] | None = None
        self._stop_report: asyncio.Task[None] | None = None
        self._watchdog: threading.Timer | None = None

    def stopping(self) -> None:
        """The role starts its stop: set `stop` and arm the watchdog now, from this very call (the task that
        would arm it on `stop` may never run if the event loop hangs next)."""
        self.stop.set()
        self._arm_watchdog()

    def _arm_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Timer(self.settings.shutdown_timeout + STOP_MARGIN, self._exit_hung)
            self._watchdog.name = f"stop watchdog {self.role} {self.name}"
            self._watchdog.daemon = True
            self._watchdog.start()

    async def __aenter__(self) -> Lifecycle:
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for sig in SIGNALS:
                loop.add_signal_handler(sig, self.stop.set)
        metrics.serve_metrics(self.settings.metrics_port, self.settings.metrics_host)
        self.spawn(metrics.watch_loop_lag(), "loop lag")
        # not in `background`: it must outlive the teardown, where a stop can hang too
        self._stop_report = asyncio.create_task(self._report_slow_stop(), name="stop report")
        return self

    def _exit_hung(self) -> None:
        log.error("%s %s: still stopping %.0fs past the shutdown timeout: exiting 1 now (unfinished tasks are "
                  "redelivered)", self.role, self.name, STOP_MARGIN)
        logging.shutdown()
        os._exit(1)

    async def _report_slow_stop(self) -> None:
        await self.stop.wait()
        self._arm_watchdog()  # a thread: it fires even when the event loop is blocked
        if self.handle_signals:  # our own process's stderr (a host process, e.g. pytest, keeps its own)
            faulthandler.dump_traceback_later(3 * STOP_REPORT_AFTER)  # from a thread of its own
        await asyncio.sleep(STOP_REPORT_AFTER)
        me = asyncio.current_task()
        log.warning("%s %s still stopping after %.0fs; its tasks wait in:\n%s", self.role, self.name,
                    STOP_REPORT_AFTER, "\n".join(f"  {t.get_name()}: {awaiting(t)}"
                                                  for t in asyncio.all_tasks() if t is not me))

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A background loop of the process, cancelled at teardown."""
        task = asyncio.create_task(coro, name=name)
        self.background.append(task)
        return task

    def beat(self, progress: heartbeat.Progress | None = None) -> asyncio.Task[None]:
        """Start the heartbeat; a heartbeat that ends by itself sets `stop` (the role then exits non-zero
        via `failed`, and the supervisor restarts the process)."""
        self.heartbeat = self.spawn(heartbeat.beat_forever(self.redis, self.keys, self.role, self.name,
                                                           self.settings, progress), "heartbeat")
        self.heartbeat.add_done_callback(lambda _: self.stop.set())
        return self.heartbeat

    @property
    def failed(self) -> bool:
        """The heartbeat ended by itself (not cancelled at teardown)."""
        return self.heartbeat is not None and self.heartbeat.done() and not self.heartbeat.cancelled()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            await cancel_and_wait(self.background)
            if self.heartbeat is not None:
                with contextlib.suppress(Exception):
                    await heartbeat.stop(self.redis, self.keys, self.role, self.name)
            with contextlib.suppress(Exception):
                await self.redis.aclose()
            await self.engine.dispose()
            if self.handle_signals:
                loop = asyncio.get_running_loop()
                for sig in SIGNALS:
                    loop.remove_signal_handler(sig)
            if self._stop_report is not None:
                self._stop_report.cancel()
        finally:
            if not self.handle_signals and self._watchdog is not None:
                self._watchdog.cancel()  # the stop ended: the host process goes on and must not be ended later
        # In our own process the watchdog and the faulthandler dump stay armed: what follows (asyncio.run's
        # executor shutdown, joining threads at exit) can hang too, and they end with the process (daemon).
        log.info("%s %s stopped", self.role, self.name)
