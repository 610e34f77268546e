"""What one API process holds open: settings, Redis, the DB engine, and its drain state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from core import metrics
from core.db import repo
from core.db.engine import make_engine
from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings

log = logging.getLogger("faultline.runtime")


@dataclass
class Runtime:
    settings: Settings
    redis: Redis
    engine: AsyncEngine
    keys: Keys
    draining: bool = False
    queue_depth: int = 0
    projects: dict[str, int] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def open(cls, settings: Settings) -> Runtime:
        return cls(settings, make_redis(settings), make_engine(settings), Keys(settings.key_prefix))

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.redis.aclose()
        await self.engine.dispose()

    def spawn(self, coro: object, name: str) -> None:
        self.tasks.append(asyncio.create_task(coro, name=name))  # type: ignore[arg-type]

    async def load_projects(self) -> None:
        """DB is the source of truth for projects; Redis carries them to nodes that start while it is down."""
        try:
            async with self.engine.connect() as conn:
                from_db = await repo.projects_by_key(conn)
            if from_db:
                await self.redis.hset(self.keys.projects, mapping={k: str(v) for k, v in from_db.items()})
        except Exception as exc:
            log.warning("projects: DB unavailable (%s); using the Redis copy", exc)
        await self.refresh_projects()

    async def refresh_projects(self) -> None:
        raw = await self.redis.hgetall(self.keys.projects)
        self.projects = {k.decode(): int(v) for k, v in raw.items()}

    async def lookup_project(self, key: str) -> int | None:
        pid = self.projects.get(key)
        if pid is None:
            raw = await self.redis.hget(self.keys.projects, key)  # created since the last refresh?
            if raw is not None:
                pid = self.projects[key] = int(raw)
        return pid

    async def watch(self, every: float = 1.0) -> None:
        """Refresh projects and the queue depth in the background: never on the request path."""
        tick = 0
        while True:
            try:
                self.queue_depth = int(await self.redis.xlen(self.keys.stream))
                metrics.QUEUE_DEPTH.set(self.queue_depth)
                if tick % 10 == 0:
                    await self.refresh_projects()
            except Exception as exc:
                log.debug("watch: %s", exc)
            tick += 1
            await asyncio.sleep(every)
