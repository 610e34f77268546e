"""A persist task's events as the writer needs them, without a pydantic model per event when they are plain.

Why: the API validated every event before the ingest script enqueued it (api/ingest.py builds the dict
below from a validated body), so the worker re-validating each one with `Event.model_validate` was
~5 % of a busy worker (py-spy, loadtest/worker_cpu.py) for nothing new. An event whose keys, types and
values are exactly what api/ingest.py writes becomes a `TaskEvent` after a few type checks; anything
else (a Sentry event with its exception chain, tags..., a task from an older release, a malformed or
hostile task) goes through `Event.model_validate` as before, so what is accepted, what it becomes and
the reason a bad task is dead-lettered with (pydantic's message) are unchanged. A TaskEvent's stored
payload is byte for byte what `Event.to_json` gives for the same dict (same keys in the same order,
None left out).
"""

from __future__ import annotations

from typing import Any

import orjson

from core.events import Event

# The keys api/ingest.py writes, in Event's field order (to_json keeps the order it is given).
PLAIN_KEYS = frozenset({"event_id", "project_id", "fingerprint", "received_at", "message", "level", "service",
                        "stack", "context"})
LEVELS = frozenset({"debug", "info", "warning", "error", "fatal"})


class TaskEvent:
    """The attributes of `Event` that the batch writer reads, for an event that needs no model."""

    __slots__ = ("_raw", "event_id", "fingerprint", "level", "message", "project_id", "received_at", "service",
                 "stack")
    exception = None  # plain events have no exception chain (Sentry events are `Event`s)

    def __init__(self, raw: dict[str, Any]) -> None:
        self._raw = raw
        self.event_id: str = raw["event_id"]
        self.project_id: int = raw["project_id"]
        self.fingerprint: str = raw["fingerprint"]
        self.received_at: float = raw["received_at"]
        self.message: str = raw["message"]
        self.level: str = raw["level"]
        self.service: str = raw["service"]
        self.stack: str | None = raw.get("stack")

    def to_json(self) -> bytes:
        return orjson.dumps({k: v for k, v in self._raw.items() if v is not None})


def _plain(raw: Any) -> bool:
    """True when `raw` is exactly what api/ingest.py enqueues: then the model would accept it unchanged."""
    if type(raw) is not dict or not PLAIN_KEYS.issuperset(raw):
        return False
    try:
        ok = (type(raw["event_id"]) is str and type(raw["project_id"]) is int
              and type(raw["fingerprint"]) is str and type(raw["received_at"]) is float
              and type(raw["message"]) is str and type(raw["service"]) is str and raw["level"] in LEVELS)
    except (KeyError, TypeError):  # a required key missing, or an unhashable level
        return False
    stack, context = raw.get("stack"), raw.get("context")
    return ok and (stack is None or type(stack) is str) and (context is None or type(context) is dict)


def decode(raw: Any) -> TaskEvent | Event:
    """One event of a task; raises pydantic's ValidationError for an event the model refuses."""
    return TaskEvent(raw) if _plain(raw) else Event.model_validate(raw)
