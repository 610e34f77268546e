"""Batching writer: many concurrent tasks, one DB transaction per batch.

Each persist task hands its events to the writer and waits; the writer collects for up to
`write_batch_delay` (50 ms) or `write_batch_size` (500) events, writes groups and samples in one
transaction, and then wakes the tasks, which are acknowledged only after that commit. At ~1 ms per
event-row upsert batched vs ~5 ms per single-row transaction, this is what lets 2 workers keep up with
ingest. Counts are not written here (see workers/sync.py): everything here is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from core import metrics
from core.db import repo
from core.dedup import RUNNING, SUCCEEDED, JobStates
from core.events import Event
from core.fingerprint import error_type
from core.keys import Keys
from core.settings import Settings

log = logging.getLogger("faultline.writer")
Item = tuple[Sequence[Event], asyncio.Future[None]]
AfterCommit = Callable[[Sequence[Event]], Awaitable[None]]


class BatchWriter:
    def __init__(self, settings: Settings, engine: AsyncEngine, redis: Redis,
                 after_commit: AfterCommit | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.redis = redis
        self.keys = Keys(settings.key_prefix)
        self.states = JobStates(redis, self.keys, settings)
        self.after_commit = after_commit
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batch-writer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def submit(self, events: Sequence[Event]) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.queue.put((events, fut))
        await fut

    async def _run(self) -> None:
        while True:
            items = [await self.queue.get()]
            size = len(items[0][0])
            deadline = asyncio.get_running_loop().time() + self.settings.write_batch_delay
            while size < self.settings.write_batch_size:
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout)
                except TimeoutError:
                    break
                items.append(item)
                size += len(item[0])
            await self._write_items(items)

    async def _write_items(self, items: list[Item]) -> None:
        try:
            await self._write_retrying_conflicts([e for events, _ in items for e in events])
        except Exception as exc:
            if repo.is_transient(exc) or len(items) == 1:
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(exc)
                return
            # Some item holds data the DB refuses: write them one by one so only the poison one fails.
            log.warning("batch of %d tasks failed (%s); isolating", len(items), exc)
            for events, fut in items:
                try:
                    await self.write(events)
                except Exception as one:
                    if not fut.done():
                        fut.set_exception(one)
                else:
                    if not fut.done():
                        fut.set_result(None)
            return
        for _, fut in items:
            if not fut.done():
                fut.set_result(None)

    async def _write_retrying_conflicts(self, events: Sequence[Event]) -> None:
        """Two workers upserting the same hot groups can deadlock (MariaDB 1213) or time out on a row lock
        (1205); InnoDB rolled the loser back, so running the same idempotent batch again at once is right,
        and cheaper than failing every task in it into the retry queue."""
        for attempt in range(3):
            try:
                await self.write(events)
                return
            except Exception as exc:
                if attempt == 2 or not repo.is_lock_conflict(exc):
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))

    async def write(self, events: Sequence[Event]) -> None:
        groups: dict[str, dict[str, Any]] = {}
        per_group: dict[str, list[Event]] = {}
        for ev in events:
            g = groups.get(ev.fingerprint)
            if g is None:
                exc_type = ev.exception[-1].type if ev.exception else error_type(ev.message, ev.stack)
                groups[ev.fingerprint] = {
                    "fingerprint": ev.fingerprint, "project_id": ev.project_id, "message": ev.message,
                    "error_type": (exc_type or None) and exc_type[:255], "service": ev.service,
                    "level": ev.level, "first_seen": ev.received_at, "last_seen": ev.received_at,
                }
            else:
                g["first_seen"] = min(g["first_seen"], ev.received_at)
                g["last_seen"] = max(g["last_seen"], ev.received_at)
            per_group.setdefault(ev.fingerprint, []).append(ev)
        keep = self.settings.samples_per_group
        samples = [
            {"event_id": ev.event_id, "fingerprint": fp, "received_at": ev.received_at,
             "payload": ev.to_json().decode()}
            for fp, evs in per_group.items() for ev in evs[-keep:]
        ]
        ids = [(ev.project_id, ev.event_id) for ev in events]
        await self._set_state(ids, RUNNING)
        with metrics.timed(metrics.DB_SECONDS, "persist_batch"):
            async with self.engine.begin() as conn:
                await repo.upsert_groups(conn, list(groups.values()))
                await repo.insert_samples(conn, samples)
        await self._set_state(ids, SUCCEEDED)
        if self.after_commit is not None:
            try:
                await self.after_commit(events)
            except Exception as exc:  # the live feed is best effort; the data is safe
                log.warning("after-commit hook failed: %s", exc)

    async def _set_state(self, events: list[tuple[int, str]], code: int) -> None:
        try:
            with metrics.timed(metrics.REDIS_SECONDS, "job_state"):
                await self.states.set(events, code)
        except Exception as exc:  # job state is informational; never fail a write for it
            log.debug("job state update failed: %s", exc)

