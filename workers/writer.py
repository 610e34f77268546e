"""Batching writer: many concurrent tasks, one DB transaction per batch.

Each persist task hands its events to the writer and waits; the writer collects for up to
`write_batch_delay` (50 ms) or `write_batch_size` (500) events, writes groups and samples in one
transaction, and then wakes the tasks, which are acknowledged only after that commit. At ~1 ms per
event-row upsert batched vs ~5 ms per single-row transaction, this is what lets 2 workers keep up with
ingest. Counts are not written here (see workers/sync.py): everything here is idempotent. Group states
are decided here too (workers/triage.py): reopening a resolved group is a compare-and-set in the batch's
transaction, signalled after its commit.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Sequence
from typing import Any

import orjson
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from core import metrics
from core.backoff import Backoff
from core.db import repo
from core.db.rerun import rerun_transaction
from core.dedup import RUNNING, SUCCEEDED, DedupId, JobStates
from core.events import Event
from core.fingerprint import error_type
from core.heartbeat import Progress
from core.keys import Keys
from core.retry import RowsRejected
from core.settings import Settings
from core.taskstop import cancel_and_wait
from workers.triage import Reopener

log = logging.getLogger("faultline.writer")
Item = tuple[Sequence[Event], asyncio.Future[None]]


class BatchWriter:
    def __init__(self, settings: Settings, engine: AsyncEngine, redis: Redis,
                 progress: Progress | None = None, keys: Keys | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.redis = redis
        self.keys = keys or Keys.from_settings(settings)
        self.states = JobStates(redis, self.keys, settings)
        self.reopener = Reopener(settings, engine, redis, self.keys)
        self.progress = progress or Progress()
        # event_id -> attempt number of the task that carries it (core/retry.py counts; the record keeps it)
        self.attempts: dict[str, int] = {}
        # DB outages are logged once (start, then "recovered after N s"), not once per failed batch; the
        # failed tasks themselves are parked for a later retry by core/retry.py, never dead-lettered.
        self.outage = Backoff.for_loop("batch writer: database", log, settings)
        self.outage.give_up_after = None
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batch-writer")

    def tasks(self) -> list[asyncio.Task[None]]:
        """For the worker's supervisor: if the writer loop ever ends, nothing gets stored any more."""
        return [self._task] if self._task else []

    async def stop(self) -> None:
        if self._task:
            await cancel_and_wait([self._task])

    async def submit(self, events: Sequence[Event], attempt: int = 1) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for ev in events:
            self.attempts[ev.event_id] = attempt
        try:
            await self.queue.put((events, fut))
            await fut
        finally:
            for ev in events:
                self.attempts.pop(ev.event_id, None)

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
        """Write the batch; if the DB refuses it for good, find the refused rows by bisection: every other
        event is stored and only the tasks holding a refused row fail (RowsRejected names the rows, so the
        retries and the dead letter carry those rows alone). A DB that is down fails everything as
        transient: retried without limit, never dead-lettered (core/retry.py)."""
        try:
            await self._write_retrying_conflicts([e for events, _ in items for e in events])
        except Exception as exc:
            if repo.is_transient(exc):
                self.progress.errors += 1
                self.outage.next_delay(exc)  # for the log line only: the retries are paced by core/retry.py
                for _, fut in items:
                    _settle(fut, exc)
                return
            log.warning("batch of %d tasks refused (%s); isolating the refused rows", len(items), exc)
            for events, fut in items:
                rejected: list[tuple[Event, BaseException]] = []
                try:
                    await self._isolate(events, rejected)
                except Exception as down:  # the DB went away meanwhile: transient for this task
                    _settle(fut, down)
                    continue
                if rejected:
                    self.progress.errors += 1
                    _settle(fut, RowsRejected([ev.event_id for ev, _ in rejected], rejected[0][1]))
                else:
                    _settle(fut, None)
            return
        self.outage.ok()
        for _, fut in items:
            _settle(fut, None)

    async def _isolate(self, events: Sequence[Event], rejected: list[tuple[Event, BaseException]]) -> None:
        """Write `events`, halving whatever the DB refuses down to single rows: ~2*log2(n) writes per bad row."""
        try:
            await self._write_retrying_conflicts(events)
        except Exception as exc:
            if repo.is_transient(exc):
                raise
            if len(events) == 1:
                rejected.append((events[0], exc))
                return
            mid = len(events) // 2
            await self._isolate(events[:mid], rejected)
            await self._isolate(events[mid:], rejected)

    async def _write_retrying_conflicts(self, events: Sequence[Event]) -> None:
        """Two workers upserting the same hot groups deadlock (1213), wait out a row lock (1205) or, on Galera,
        lose the certification at COMMIT (1213); a node may die under the transaction. The server rolled
        the batch back and it is idempotent, so running it again at once (core/db/rerun.py) beats failing
        every task in it into the retry queue."""
        await rerun_transaction("persist_batch", lambda: self.write(events), self.settings)

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
        # Only the samples that can be kept: a group keeps its `keep` newest (workers/retention.py trims
        # the rest), so older events of a group in this batch are never written. Newest by received_at:
        # a batch mixes tasks of several API nodes and stream shards, not in time order.
        keep = self.settings.samples_per_group
        samples = [
            {"event_id": ev.event_id, "fingerprint": fp, "received_at": ev.received_at,
             "payload": ev.to_json().decode()}
            for fp, evs in per_group.items()
            for ev in (evs if len(evs) <= keep else heapq.nlargest(keep, evs, key=_received))
        ]
        ids = [(ev.project_id, ev.event_id, ev.fingerprint) for ev in events]
        hashed = self.states.by_shard(ids)  # hashed once for both state changes
        await self._set_state(ids, hashed, RUNNING)
        with metrics.timed(metrics.DB_SECONDS, "persist_batch"):
            async with self.engine.begin() as conn:
                await repo.upsert_groups(conn, list(groups.values()))
                await repo.insert_samples(conn, samples)
                # group states: an event for a resolved group reopens it, in this same transaction
                reopened = await self.reopener.in_transaction(
                    conn, {fp: g["last_seen"] for fp, g in groups.items()})
        await self.reopener.after_commit(reopened)
        self.progress.written += len(events)
        await self._set_state(ids, hashed, SUCCEEDED)

    async def _set_state(self, events: list[tuple[int, str, str]], hashed: dict[int, list[DedupId]],
                         code: int) -> None:
        try:
            if code == SUCCEEDED:  # a retried success keeps the attempt count core/retry.py kept
                retried = [(p, e, n) for p, e, _ in events if (n := self.attempts.get(e, 1)) > 1]
                if retried:
                    pipe = self.redis.pipeline(transaction=False)
                    for p, e, n in retried:
                        pipe.set(self.keys.event_detail(p, e),
                                 orjson.dumps({"state": "succeeded", "attempts": n, "last_error": None}),
                                 ex=self.settings.dedup_ttl)
                    await pipe.execute()
            with metrics.timed(metrics.REDIS_SECONDS, "job_state"):
                await self.states.set(hashed, code)
        except Exception as exc:  # job state is informational; never fail a write for it
            log.debug("job state update failed: %s", exc)


def _received(ev: Event) -> float:
    return ev.received_at


def _settle(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)
