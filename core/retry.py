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
from core.db.repo import is_transient
from core.dedup import DEAD, RETRYING, JobStates
from core.keys import Keys
from core.redis import load_script
from core.settings import Settings
from core.tasks import ATTEMPT_LABEL

log = logging.getLogger("faultline.retry")
TRANSIENT_LABEL = "transient_attempt"
# The dead-letter list keeps the newest 10,000 failures: enough to diagnose and replay, bounded in Redis.
DEAD_LETTER_CAP = 10_000


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before retry number `attempt` (1-based): half of base*2^(attempt-1) fixed, half random.

    "Equal jitter": spreads a herd of retries yet every delay is at least the previous one's maximum,
    so the backoff really grows.
    """
    ceiling = min(cap, base * (2 ** (attempt - 1)))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


class RetryMiddleware(TaskiqMiddleware):
    def __init__(self, settings: Settings, redis: Redis) -> None:
        super().__init__()
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.redis = redis
        self._schedule = load_script(redis, "retry_schedule")
        self._states = JobStates(redis, self.keys, settings)

    async def on_error(self, message: TaskiqMessage, result: TaskiqResult[Any], exception: BaseException) -> None:
        attempt = int(message.labels.get(ATTEMPT_LABEL, 1))
        event_ids = [(e.get("project_id"), e.get("event_id"))
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
        await self._schedule(keys=[self.keys.retries], args=[int(delay * 1000), _wire(message, labels)])
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
        for project_id, event_id in _pairs(event_ids):  # details; the state code is in core/dedup.py
            pipe.set(self.keys.event_detail(project_id, event_id), value, ex=self.settings.dedup_ttl)


def _pairs(event_ids: list[Any]) -> list[tuple[int, str]]:
    return [(p, e) for p, e in event_ids if isinstance(p, int) and isinstance(e, str)]


def _wire(message: TaskiqMessage, labels: dict[str, Any]) -> bytes:
    return orjson.dumps({"task_id": message.task_id, "task_name": message.task_name, "labels": labels,
                         "labels_types": None, "args": message.args, "kwargs": message.kwargs})


async def pump_retries(redis: Redis, keys: Keys, batch: int = 200) -> int:
    script = load_script(redis, "retry_pump")
    return int(await script(keys=[keys.retries, keys.stream], args=[batch]))


class OutcomeMiddleware(TaskiqMiddleware):
    """Counts successful tasks (failures are counted by RetryMiddleware with their fate)."""

    def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        if not result.is_err:
            metrics.JOBS.labels("succeeded").inc()
