"""Batching writer: many concurrent tasks, one DB transaction per batch.

Each persist task hands its events to the writer and waits (workers/handoff.py); the writer collects for up to
`write_batch_delay` (250 ms) or `write_batch_size` (2,000) events, writes groups and samples in one
transaction, and then wakes the tasks, which are acknowledged only after that commit. At ~1 ms per
event-row upsert batched vs ~5 ms per single-row transaction, this is what lets 2 workers keep up with
ingest. Counts are not written here (see workers/sync.py): everything here is idempotent. Group states
are decided here too (workers/triage.py): reopening a resolved group is a compare-and-set in the batch's
transaction, signalled after its commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from core import metrics
from core.backoff import Backoff
from core.db import repo
from core.db.rerun import rerun_transaction
from core.dedup import SUCCEEDED
from core.heartbeat import Progress
from core.keys import Keys
from core.retry import RowsRejected
from core.settings import Settings
from core.taskstop import cancel_and_wait
from workers.batchrows import AnyEvent, group_rows, kept_samples
from workers.handoff import Item, Outcomes, Pending
from workers.jobstate import RunningMark, StateWriter
from workers.triage import Reopener

log = logging.getLogger("faultline.writer")


class BatchWriter:
    def __init__(self, settings: Settings, engine: AsyncEngine, redis: Redis,
                 progress: Progress | None = None, keys: Keys | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.keys = keys or Keys.from_settings(settings)
        self.jobs = StateWriter(settings, redis, self.keys)
        self.reopener = Reopener(settings, engine, redis, self.keys)
        self.progress = progress or Progress()
        # DB outages are logged once (start, then "recovered after N s"), not once per failed batch; the
        # failed tasks themselves are parked for a later retry by core/retry.py, never dead-lettered.
        self.outage = Backoff.for_loop("batch writer: database", log, settings)
        self.outage.give_up_after = None
        self.pending = Pending(settings.write_batch_size, settings.write_batch_delay,
                               max(1, settings.worker_concurrency // 2))
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batch-writer")

    def tasks(self) -> list[asyncio.Task[None]]:
        """For the worker's supervisor: if the writer loop ever ends, nothing gets stored any more."""
        return [self._task] if self._task else []

    async def stop(self) -> None:
        if self._task:
            await cancel_and_wait([self._task])

    async def submit(self, events: Sequence[AnyEvent], attempt: int = 1) -> None:
        """One task's events; returns once they are committed, raises the batch's error for them."""
        (outcome,) = await self.enqueue([(events, attempt)])
        if outcome is not None:
            raise outcome

    def enqueue(self, tasks: Sequence[tuple[Sequence[AnyEvent], int]]) -> asyncio.Future[Outcomes]:
        """Hand many tasks' (events, attempt) over without waiting (workers/persist.py hands a whole read
        over at once): the future gives each task's outcome once all of them are known."""
        handoff = self.pending.add([events for events, _ in tasks])
        retried = [ev.event_id for events, attempt in tasks if attempt > 1 for ev in events]
        if retried:  # first attempts (nearly all) need no record
            for events, attempt in tasks:
                if attempt > 1:
                    self.jobs.remember((ev.event_id for ev in events), attempt)
            handoff.future.add_done_callback(lambda _: self.jobs.forget(retried))
        return handoff.future

    async def _run(self) -> None:
        while True:
            await self._write_items(await self.pending.batch())

    async def _write_items(self, items: list[Item]) -> None:
        """Write the batch; if the DB refuses it for good, find the refused rows by bisection: every other
        event is stored and only the tasks holding a refused row fail (RowsRejected names the rows, so the
        retries and the dead letter carry those rows alone). A DB that is down fails everything as
        transient: retried without limit, never dead-lettered (core/retry.py)."""
        try:
            await self._write_retrying_conflicts([e for events, _, _ in items for e in events])
        except Exception as exc:
            if repo.is_transient(exc):
                self.progress.errors += 1
                self.outage.next_delay(exc)  # for the log line only: the retries are paced by core/retry.py
                for _, handoff, i in items:
                    handoff.settle(i, exc)
                return
            log.warning("batch of %d tasks refused (%s); isolating the refused rows", len(items), exc)
            for events, handoff, i in items:
                rejected: list[tuple[AnyEvent, BaseException]] = []
                try:
                    await self._isolate(events, rejected)
                except Exception as down:  # the DB went away meanwhile: transient for this task
                    handoff.settle(i, down)
                    continue
                if rejected:
                    self.progress.errors += 1
                    handoff.settle(i, RowsRejected([ev.event_id for ev, _ in rejected], rejected[0][1]))
                else:
                    handoff.settle(i, None)
            return
        self.outage.ok()
        for _, handoff, i in items:
            handoff.settle(i, None)

    async def _isolate(self, events: Sequence[AnyEvent], rejected: list[tuple[AnyEvent, BaseException]]) -> None:
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

    async def _write_retrying_conflicts(self, events: Sequence[AnyEvent]) -> None:
        """Two workers upserting the same hot groups deadlock (1213), wait out a row lock (1205) or, on Galera,
        lose the certification at COMMIT (1213); a node may die under the transaction. The server rolled
        the batch back and it is idempotent, so running it again at once (core/db/rerun.py) beats failing
        every task in it into the retry queue."""
        await rerun_transaction("persist_batch", lambda: self.write(events), self.settings)

    async def write(self, events: Sequence[AnyEvent]) -> None:
        groups, per_group = group_rows(events)
        samples = kept_samples(per_group, self.settings.samples_per_group)
        ids = [(ev.project_id, ev.event_id, ev.fingerprint) for ev in events]
        hashed = self.jobs.hashed(ids)  # hashed once for both state changes
        running = RunningMark(self.jobs, self.settings.job_running_after, ids, hashed)  # only if slow
        try:
            with metrics.timed(metrics.DB_SECONDS, "persist_batch"):
                async with self.engine.begin() as conn:
                    await repo.upsert_groups(conn, list(groups.values()))
                    await repo.insert_samples(conn, samples)
                    # group states: an event for a resolved group reopens it, in this same transaction
                    reopened = await self.reopener.in_transaction(
                        conn, {fp: g["last_seen"] for fp, g in groups.items()})
        finally:
            await running.settle()
        await self.reopener.after_commit(reopened)
        self.progress.written += len(events)
        await self.jobs.set(ids, hashed, SUCCEEDED)
