"""What one API process holds open: settings, Redis, the DB engine, and its drain state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from core import access, metrics
from core.db import repo
from core.db.engine import make_engine
from core.keys import Keys
from core.queue import queue_depth
from core.redis import as_str, make_redis
from core.settings import Settings

log = logging.getLogger("faultline.runtime")
ShutdownHook = Callable[[], Awaitable[None]]
_current: Runtime | None = None


def current() -> Runtime | None:
    """The runtime this process opened last: the uvicorn worker drives its drain through it."""
    return _current


@dataclass
class Runtime:
    settings: Settings
    redis: Redis
    engine: AsyncEngine
    keys: Keys
    draining: bool = False
    drain_state: str = "serving"  # moved by health/drain.py: serving, draining, stopping, closing, stopped
    drain_started: float | None = None  # monotonic time of SIGTERM
    queue_depth: int = 0
    last_tick: float = field(default_factory=time.monotonic)  # watch() loop heartbeat, read by liveness
    projects: dict[str, int] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Registered by the composition root (faultline/asgi.py), which alone may import realtime/:
    # drain hooks tell connected clients to reconnect elsewhere, flush hooks empty buffers before the
    # pools close.
    drain_hooks: list[ShutdownHook] = field(default_factory=list)
    flush_hooks: list[ShutdownHook] = field(default_factory=list)
    drain_hooks_done: bool = False
    phases: list[tuple[str, float]] = field(default_factory=list)

    @classmethod
    def open(cls, settings: Settings) -> Runtime:
        global _current
        _current = cls(settings, make_redis(settings), make_engine(settings), Keys.from_settings(settings))
        return _current

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time one shutdown phase and log it with the time since SIGTERM (an operator reading the log wants both)."""
        start = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - start
            self.phases.append((name, took))
            since = f"{time.monotonic() - self.drain_started:.3f}s" if self.drain_started else "-"
            log.info("shutdown phase %-16s took %.3fs (since SIGTERM %s)", name, took, since)

    async def run_hooks(self, hooks: list[ShutdownHook], what: str) -> None:
        for hook in hooks:
            try:
                await hook()
            except Exception as exc:  # one failing hook must not keep the pools open
                log.warning("%s hook %r failed: %s", what, hook, exc)

    async def reconnect_clients(self) -> None:
        """Tell long-lived clients (Socket.IO) to reconnect to another node; runs once."""
        if not self.drain_hooks_done:
            self.drain_hooks_done = True
            with self.phase("reconnect clients"):
                await self.run_hooks(self.drain_hooks, "drain")

    async def close(self) -> None:
        await self.reconnect_clients()  # no-op when the drain already did it
        with self.phase("flush"):
            await self.run_hooks(self.flush_hooks, "flush")
        with self.phase("close pools"):
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.redis.aclose()
            await self.engine.dispose()

    def spawn(self, coro: object, name: str) -> None:
        self.tasks.append(asyncio.create_task(coro, name=name))  # type: ignore[arg-type]

    async def load_projects(self) -> None:
        """DB is the source of truth for projects; Redis carries them to nodes that start while it is down.
        Both hold key hashes only (core.access.key_hash)."""
        try:
            async with self.engine.connect() as conn:
                from_db = await repo.projects_by_key(conn)
            await access.publish_keys(self.redis, self.keys.projects, from_db)
        except Exception as exc:
            log.warning("projects: DB unavailable (%s); using the Redis copy", exc)
        await self.refresh_projects()

    async def refresh_projects(self) -> None:
        raw = await self.redis.hgetall(self.keys.projects)
        self.projects = {as_str(k): int(v) for k, v in raw.items()}  # key hash -> project id

    def knows_key(self, key: str) -> bool:
        return access.key_hash(key) in self.projects

    async def lookup_project(self, key: str) -> int | None:
        digest = access.key_hash(key)
        pid = self.projects.get(digest)
        if pid is None:
            raw = await self.redis.hget(self.keys.projects, digest)  # created since the last refresh?
            if raw is not None:
                pid = self.projects[digest] = int(raw)
        return pid

    async def watch(self, every: float = 1.0) -> None:
        """Refresh projects and the queue depth in the background: never on the request path."""
        tick = 0
        while True:
            self.last_tick = time.monotonic()
            try:
                self.queue_depth = await queue_depth(self.redis, self.keys)
                metrics.QUEUE_DEPTH.set(self.queue_depth)
                if tick % 10 == 0:
                    await self.refresh_projects()
            except Exception as exc:
                log.debug("watch: %s", exc)
            tick += 1
            await asyncio.sleep(every)
