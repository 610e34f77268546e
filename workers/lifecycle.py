"""The process lifecycle a worker and a scheduler share: signals -> metrics -> heartbeat -> teardown.

    async with Lifecycle(settings, "worker", name, pool_size=64) as life:
        life.beat(progress)          # heartbeat (core/heartbeat.py) until the end
        ...                          # the role's own work, until life.stop is set
    # teardown: background tasks cancelled, heartbeat removed, pools closed

SIGTERM/SIGINT set `stop`. handle_signals=False leaves the signals alone, so a test (or any host process)
runs the role in process and ends it by setting `stop` itself, as arq's Worker(handle_signals=False) does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
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

log = logging.getLogger("faultline.lifecycle")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


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

    async def __aenter__(self) -> Lifecycle:
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for sig in SIGNALS:
                loop.add_signal_handler(sig, self.stop.set)
        metrics.serve_metrics(self.settings.metrics_port, self.settings.metrics_host)
        self.spawn(metrics.watch_loop_lag(), "loop lag")
        return self

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
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
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
        log.info("%s %s stopped", self.role, self.name)
