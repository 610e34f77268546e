"""What one API process holds open: settings, its Redis and DB pools, and the cache of project keys."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from core import access
from core.db import repo
from core.db.engine import make_engine
from core.keys import Keys
from core.redis import as_str, make_redis
from core.settings import Settings
from core.taskstop import cancel_and_wait

log = logging.getLogger("faultline.runtime")


@dataclass
class Runtime:
    settings: Settings
    redis: Redis
    engine: AsyncEngine
    keys: Keys
    last_tick: float = field(default_factory=time.monotonic)  # watch() loop heartbeat, read by liveness
    projects: dict[str, int] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def open(cls, settings: Settings) -> Runtime:
        return cls(settings, make_redis(settings), make_engine(settings), Keys.from_settings(settings))

    async def close(self) -> None:
        """Stop the background tasks, then close the pools they use."""
        await cancel_and_wait(self.tasks)
        with contextlib.suppress(Exception):
            await self.redis.aclose()
        await self.engine.dispose()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self.tasks.append(asyncio.create_task(coro, name=name))

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
        """Refresh the project cache in the background, never on the request path; each tick also tells
        the liveness probe the loop still runs its background work."""
        # the project cache every settings.projects_refresh s (in ticks); a key created elsewhere is also
        # found on a cache miss (lookup_project)
        projects_every = max(1, round(self.settings.projects_refresh / every))
        tick = 0
        while True:
            self.last_tick = time.monotonic()
            if tick % projects_every == 0:
                try:
                    await self.refresh_projects()
                except Exception as exc:
                    log.debug("projects refresh: %s", exc)
            tick += 1
            await asyncio.sleep(every)
