"""The dead-letter list (core/retry.py writes it): list, show, replay, purge. Used by the CLI and the
admin API alike.

A record is identified by its task id. Replay puts the task's message back on its key shard's stream with
its attempt counter reset, then removes the record: a crash never loses it (it may replay it twice).
Replaying is idempotent anyway: counts come from the ingest script, not from the task, and the
worker's writes (group upsert, sample INSERT IGNORE by event_id) change nothing the second time.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from core.dedup import QUEUED, JobStates
from core.keys import Keys
from core.settings import Settings
from core.tasks import task_fingerprint

SUMMARY_FIELDS = ("task_id", "task_name", "attempts", "error", "failed_at")


def summary(record: dict[str, Any]) -> dict[str, Any]:
    events = _events(record)
    return {**{k: record.get(k) for k in SUMMARY_FIELDS}, "events": len(events),
            "event_ids": [e.get("event_id") for e in events if isinstance(e, dict)][:20]}


def _events(record: dict[str, Any]) -> list[Any]:
    try:
        events = orjson.loads(record["message"]).get("kwargs", {}).get("events", [])
    except (KeyError, ValueError, AttributeError):
        return []
    return events if isinstance(events, list) else []


async def count(redis: Redis, keys: Keys) -> int:
    return int(await redis.llen(keys.dead_letters))  # type: ignore[misc]


async def page(redis: Redis, keys: Keys, offset: int = 0, limit: int = 50) -> list[dict[str, Any]]:
    """Newest first."""
    raws = await redis.lrange(keys.dead_letters, offset, offset + limit - 1)  # type: ignore[misc]
    return [orjson.loads(r) for r in raws]


async def _find(redis: Redis, keys: Keys, task_id: str) -> tuple[Any, dict[str, Any]] | None:
    # The list is capped (core.retry.DEAD_LETTER_CAP), so a scan is bounded; read in slices.
    start, step = 0, 500
    while True:
        raws = await redis.lrange(keys.dead_letters, start, start + step - 1)  # type: ignore[misc]
        for raw in raws:
            record = orjson.loads(raw)
            if record.get("task_id") == task_id:
                return raw, record
        if len(raws) < step:
            return None
        start += step


async def get(redis: Redis, keys: Keys, task_id: str) -> dict[str, Any] | None:
    found = await _find(redis, keys, task_id)
    return None if found is None else found[1]


async def _requeue(redis: Redis, keys: Keys, settings: Settings, raw: Any, record: dict[str, Any]) -> bool:
    message = orjson.loads(record["message"])
    message["labels"] = {}  # a fresh set of attempts
    # Queued first, then removed from the list: a crash in between replays it twice, which the idempotent
    # writes absorb (counts come from ingest, never from tasks); the other order could lose it. The stream
    # is that of the task's key shard, a different slot from the dead letters on a cluster: two calls.
    stream = keys.for_fingerprint(task_fingerprint(message.get("kwargs"))).stream
    await redis.xadd(stream, {"data": orjson.dumps(message)})
    pipe = redis.pipeline(transaction=False)
    pipe.lrem(keys.dead_letters, 1, raw)
    # The task's own record says it was replayed; its events' records (GET /jobs/{event_id}) go back to
    # "queued" and move on as the worker writes them.
    pipe.set(keys.job(record["task_id"]), orjson.dumps({"state": "replayed", "attempts": record.get("attempts"),
                                                        "last_error": record.get("error")}), ex=86_400)
    removed, *_ = await pipe.execute()
    if removed:
        pairs = [(e["project_id"], e["event_id"], e["fingerprint"]) for e in _events(record)
                 if isinstance(e, dict) and isinstance(e.get("project_id"), int)
                 and isinstance(e.get("event_id"), str) and isinstance(e.get("fingerprint"), str)]
        await JobStates(redis, keys, settings).set(pairs, QUEUED)  # the worker moves them on from here
    return bool(removed)


async def replay(redis: Redis, keys: Keys, settings: Settings, task_id: str) -> bool:
    """False if there is no such dead letter (already replayed, purged, or never dead)."""
    found = await _find(redis, keys, task_id)
    return found is not None and await _requeue(redis, keys, settings, *found)


async def replay_all(redis: Redis, keys: Keys, settings: Settings) -> int:
    moved = 0
    while (raws := await redis.lrange(keys.dead_letters, -100, -1)):  # type: ignore[misc]
        for raw in reversed(raws):  # oldest first
            moved += await _requeue(redis, keys, settings, raw, orjson.loads(raw))
    return moved


async def purge(redis: Redis, keys: Keys) -> int:
    # moved aside first (atomic), then counted and dropped: what arrives meanwhile stays
    side = f"{keys.dead_letters}:purge:{uuid.uuid4().hex[:8]}"
    try:
        await redis.rename(keys.dead_letters, side)
    except ResponseError:  # no such key: nothing to purge
        return 0
    pipe = redis.pipeline(transaction=False)
    pipe.llen(side)
    pipe.delete(side)
    n, _ = await pipe.execute()
    return int(n)
