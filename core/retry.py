"""Retries with real exponential backoff and jitter, and a dead-letter list after the last attempt.

taskiq's SmartRetryMiddleware grows delays linearly and needs a scheduler to honour them; here a failed
task is parked in a Redis sorted set scored by due time (Redis's clock) and moved back onto the stream by
`pump_retries`, which every worker runs. Errors that mean "the database is unavailable" (see
core.db.repo.is_transient) retry without limit, so a DB outage delays persistence but never dead-letters.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import orjson
from redis.asyncio import Redis
from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult

from core import metrics
from core.backoff import delay_for
from core.db.repo import is_transient
from core.dedup import DEAD, RETRYING, JobStates
from core.heartbeat import Progress
from core.keys import Keys
from core.redis import is_cluster, load_script
from core.settings import Settings
from core.tasks import ATTEMPT_LABEL, task_fingerprint

log = logging.getLogger("faultline.retry")
TRANSIENT_LABEL = "transient_attempt"
# The dead-letter list keeps the newest 10,000 failures: enough to diagnose and replay, bounded in Redis.
DEAD_LETTER_CAP = 10_000


class RowsRejected(Exception):
    """The DB refused some rows of a task for good (value too long, bad charset, out of range...) and
    stored all the others. The retries and the dead letter then carry the refused rows only."""

    def __init__(self, event_ids: list[str], reason: BaseException) -> None:
        self.event_ids = event_ids
        self.reason = reason
        super().__init__(f"{len(event_ids)} row(s) refused by the database: {_describe(reason)}")


def _describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)  # the driver's own error: "(1406, "Data too long for column ...")"
    return f"{type(orig or exc).__name__}: {orig or exc}"


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before retry number `attempt` (1-based): the same "equal jitter" backoff as every loop
    (core/backoff.py): half of base*2^(attempt-1) fixed, half random, capped."""
    return delay_for(attempt, base, cap, rng)


class RetryMiddleware(TaskiqMiddleware):
    def __init__(self, settings: Settings, redis: Redis, keys: Keys | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.keys = keys or Keys.from_settings(settings)
        self.redis = redis
        self._schedule = load_script(redis, "retry_schedule")
        self._states = JobStates(redis, self.keys, settings)

    async def on_error(self, message: TaskiqMessage, result: TaskiqResult[Any], exception: BaseException) -> None:
        attempt = int(message.labels.get(ATTEMPT_LABEL, 1))
        if isinstance(exception, RowsRejected):  # the rest of the task is stored: go on with these rows only
            refused = set(exception.event_ids)
            events = [e for e in message.kwargs.get("events", []) if isinstance(e, dict)
                      and e.get("event_id") in refused]
            message = message.model_copy(update={"kwargs": {**message.kwargs, "events": events}})
        event_ids = [(e.get("project_id"), e.get("event_id"), e.get("fingerprint"))
                     for e in message.kwargs.get("events", []) if isinstance(e, dict)]
        error = f"{type(exception).__name__}: {exception}"[:500]
        if is_transient(exception):
            n = int(message.labels.get(TRANSIENT_LABEL, 0)) + 1
            labels = {**message.labels, TRANSIENT_LABEL: n}
            delay = backoff_delay(min(n, 16), self.settings.retry_base_delay, self.settings.retry_max_delay)
            await self._park(message, labels, delay, "retrying", attempt, error, event_ids)
            metrics.JOBS.labels("retried_transient").inc()
            return
        if attempt < self.settings.retry_max_attempts:
            delay = backoff_delay(attempt, self.settings.retry_base_delay, self.settings.retry_max_delay)
            await self._park(message, {**message.labels, ATTEMPT_LABEL: attempt + 1}, delay, "retrying",
                             attempt, error, event_ids)
            metrics.JOBS.labels("retried").inc()
            log.warning("task %s attempt %d failed (%s); retry in %.2fs", message.task_id, attempt, error, delay)
            return
        record = {"task_id": message.task_id, "task_name": message.task_name, "attempts": attempt,
                  "error": error, "failed_at": time.time(),
                  "message": _wire(message, message.labels).decode()}
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(self.keys.dead_letters, orjson.dumps(record))
        pipe.ltrim(self.keys.dead_letters, 0, DEAD_LETTER_CAP - 1)
        self._status(pipe, message.task_id, event_ids, "dead", attempt, error)
        await pipe.execute()
        await self._states.set(_pairs(event_ids), DEAD)
        metrics.JOBS.labels("dead").inc()
        log.error("task %s dead after %d attempts: %s", message.task_id, attempt, error)

    async def _park(self, message: TaskiqMessage, labels: dict[str, Any], delay: float, state: str,
                    attempt: int, error: str, event_ids: list[Any]) -> None:
        # back onto the stream of its first event's shard (on a cluster every event of a task shares it)
        shard = self.keys.for_fingerprint(task_fingerprint(message.kwargs))
        await self._schedule(keys=[shard.retries], args=[int(delay * 1000), _wire(message, labels)])
        pipe = self.redis.pipeline(transaction=False)
        self._status(pipe, message.task_id, event_ids, state, attempt, error, next_delay=delay)
        await pipe.execute()
        await self._states.set(_pairs(event_ids), RETRYING)

    def _status(self, pipe: Any, task_id: str, event_ids: list[Any], state: str, attempts: int, error: str,
                next_delay: float | None = None) -> None:
        record = {"state": state, "attempts": attempts, "last_error": error}
        if next_delay is not None:
            record["next_attempt_in"] = round(next_delay, 3)
        value = orjson.dumps(record)
        ttl = max(self.settings.dedup_ttl, 86_400)
        pipe.set(self.keys.job(task_id), value, ex=ttl)
        for project_id, event_id, _ in _pairs(event_ids):  # details; the state code is in core/dedup.py
            pipe.set(self.keys.event_detail(project_id, event_id), value, ex=self.settings.dedup_ttl)


def _pairs(event_ids: list[Any]) -> list[tuple[int, str, str]]:
    return [(p, e, f) for p, e, f in event_ids if isinstance(p, int) and isinstance(e, str) and isinstance(f, str)]


def _wire(message: TaskiqMessage, labels: dict[str, Any]) -> bytes:
    return orjson.dumps({"task_id": message.task_id, "task_name": message.task_name, "labels": labels,
                         "labels_types": None, "args": message.args, "kwargs": message.kwargs})


async def pump_retries(redis: Redis, keys: Keys, batch: int = 200) -> tuple[int, float | None]:
    """Move due retries onto the stream: (how many moved, seconds until the next one is due or None)."""
    return await _pump(load_script(redis, "retry_pump"), [keys], batch)


async def pump_all_retries(redis: Redis, keys: Keys, batch: int = 200) -> tuple[int, float | None]:
    """pump_retries over every key shard: (moved in all, seconds until the first next one is due or None).

    One server: ONE script call for all shards (every worker pumps 5 times a second: a call per shard was 80
    script calls a second per worker with 16 shards, for nothing). Cluster: a call per shard (one slot per
    call), one shard at a time, so a primary failing over delays only its own shard's retries."""
    script = load_script(redis, "retry_pump")
    if not is_cluster(redis):
        return await _pump(script, list(keys.all_shards), batch)
    moved, next_due = 0, None
    for shard in keys.all_shards:
        n, due = await _pump(script, [shard], batch)
        moved += n
        next_due = due if next_due is None or (due is not None and due < next_due) else next_due
    return moved, next_due


async def _pump(script: Any, shards: list[Keys], batch: int) -> tuple[int, float | None]:
    moved, next_in_ms = await script(keys=[k for s in shards for k in (s.retries, s.stream)], args=[batch])
    return int(moved), None if int(next_in_ms) < 0 else int(next_in_ms) / 1000


class OutcomeMiddleware(TaskiqMiddleware):
    """Counts successful tasks (failures are counted by RetryMiddleware with their fate), and keeps the
    worker's progress (core/heartbeat.py) up to date: tasks running, last task finished."""

    def __init__(self, progress: Progress | None = None) -> None:
        super().__init__()
        self.progress = progress or Progress()

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        self.progress.in_progress += 1
        return message

    def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        self.progress.in_progress = max(0, self.progress.in_progress - 1)
        self.progress.mark_done(failed=result.is_err)
        if not result.is_err:
            metrics.JOBS.labels("succeeded").inc()
