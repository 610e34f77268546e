"""The job states the batch writer reports for its events: succeeded after the write, and running while a
write has taken longer than `job_running_after`.

GET /jobs/{id} reads them (core/dedup.py keeps them in the dedup entries: one script call per batch and
state). A task that succeeded on a later attempt also gets a detail record with its attempt count, the
one core/retry.py counted, so the job record says how many runs a success took.

Why "running" only for a slow write: each state is a read and a write of every event's dedup entry in
Redis, and the writer's own argument packing; "running" before every write was a third of the hash
commands per event (bench commandstats: HGET/HSET 3.25 each per event). A write that commits within
`job_running_after` (nearly all: tens of ms) goes from queued to succeeded, where a client polling GET
/jobs/{id} could rarely have seen "running" anyway; a write that takes longer (a slow or locked DB) shows
running, as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

import orjson
from redis.asyncio import Redis

from core import metrics
from core.dedup import RUNNING, SUCCEEDED, DedupId, JobStates
from core.keys import Keys
from core.settings import Settings

log = logging.getLogger("faultline.writer")
Ids = list[tuple[int, str, str]]  # (project id, event id, fingerprint) of each event of a batch


class StateWriter:
    def __init__(self, settings: Settings, redis: Redis, keys: Keys) -> None:
        self.settings, self.redis, self.keys = settings, redis, keys
        self.states = JobStates(redis, keys, settings)
        # event_id -> attempt number of the task that carries it (core/retry.py counts; the record keeps it)
        self.attempts: dict[str, int] = {}

    def remember(self, event_ids: Iterable[str], attempt: int) -> None:
        """Only for attempt > 1 (nearly every task is a first attempt: set()'s default is 1)."""
        for e in event_ids:
            self.attempts[e] = attempt

    def forget(self, event_ids: Iterable[str]) -> None:
        for e in event_ids:
            self.attempts.pop(e, None)

    def hashed(self, ids: Ids) -> dict[int, list[DedupId]]:
        """The dedup ids by key shard, hashed once for both state changes of a batch."""
        return self.states.by_shard(ids)

    async def set(self, ids: Sequence[tuple[int, str, str]], hashed: dict[int, list[DedupId]], code: int) -> None:
        try:
            if code == SUCCEEDED and self.attempts:  # a retried success keeps the attempt count
                retried = [(p, e, n) for p, e, _ in ids if (n := self.attempts.get(e, 1)) > 1]
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


class RunningMark:
    """Sets RUNNING for a batch once its write has taken `after` s; settle() when the write is over."""

    def __init__(self, states: StateWriter, after: float, ids: Ids, hashed: dict[int, list[DedupId]]) -> None:
        self._due = False
        self._task = asyncio.create_task(self._mark(states, after, ids, hashed), name="running mark")

    async def _mark(self, states: StateWriter, after: float, ids: Ids, hashed: dict[int, list[DedupId]]) -> None:
        await asyncio.sleep(after)
        self._due = True
        await states.set(ids, hashed, RUNNING)  # never raises: the state is informational

    async def settle(self) -> None:
        """Before any later state: a mark still waiting is dropped; one being written lands first."""
        if self._due:
            await self._task
        else:
            self._task.cancel()  # still in its sleep: nothing was sent
