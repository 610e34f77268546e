"""An event that is plainly valid, checked by hand: what LogErrorIn (core/events.py) would accept unchanged.

Why: pydantic's validation of one /errors/log event, with its `context` walk, was ~10 % of an API
process's CPU per request (py-spy, in-process driver): ~16 us an event where these checks take ~3. It is a
shortcut, not a second schema: `quick_event` accepts only values of exactly the JSON types whose every
constraint holds, with the values LogErrorIn gives them (defaults, the normalised event id), and answers
None for anything else, which then goes to LogErrorIn for its verdict and its error details. So no input
gets another answer than pydantic's (tests/unit/test_eventcheck.py compares both on generated events).
"""

from __future__ import annotations

from typing import Any, TypeGuard, get_args

import orjson

from core.events import (
    MAX_CONTEXT_BYTES,
    MAX_FINGERPRINT,
    MAX_MESSAGE,
    MAX_SERVICE,
    MAX_STACK,
    Level,
    LogErrorIn,
    normalize_event_id,
)
from core.jsoncheck import is_clean

FIELDS = frozenset(LogErrorIn.model_fields)
LEVELS = frozenset(get_args(Level))
MAX_EVENT_ID = 64


class EventIn:
    """A valid event's fields, as LogErrorIn has them (what api/ingest.py reads), without a model instance."""

    __slots__ = ("context", "event_id", "fingerprint", "level", "message", "service", "stack")

    def __init__(self, message: str, stack: str | None, service: str, level: str, context: dict[str, Any] | None,
                 fingerprint: str | None, event_id: str | None) -> None:
        self.message, self.stack, self.service, self.level = message, stack, service, level
        self.context, self.fingerprint, self.event_id = context, fingerprint, event_id


def _text(value: Any, low: int, high: int) -> TypeGuard[str]:
    return type(value) is str and low <= len(value) <= high and "\x00" not in value


def quick_event(raw: dict[str, Any], max_depth: int) -> EventIn | None:
    """The event when `raw` is plainly valid, else None (then LogErrorIn decides and names the problems)."""
    if not raw.keys() <= FIELDS:
        return None
    get = raw.get
    message, stack, service = get("message"), get("stack"), get("service", "default")
    level, context, fingerprint, event_id = get("level", "error"), get("context"), get("fingerprint"), get("event_id")
    if not _text(message, 1, MAX_MESSAGE) or not _text(service, 1, MAX_SERVICE):
        return None
    if type(level) is not str or level not in LEVELS:
        return None
    if stack is not None and not _text(stack, 0, MAX_STACK):
        return None
    if fingerprint is not None and not _text(fingerprint, 1, MAX_FINGERPRINT):
        return None
    if event_id is not None:
        if not _text(event_id, 0, MAX_EVENT_ID):
            return None
        try:
            event_id = normalize_event_id(event_id)
        except ValueError:
            return None
    if context is not None:
        if type(context) is not dict or not is_clean(context, max_depth, MAX_CONTEXT_BYTES):
            return None
        try:
            if len(orjson.dumps(context)) > MAX_CONTEXT_BYTES:
                return None
        except (TypeError, orjson.JSONEncodeError):
            return None
    return EventIn(message, stack, service, level, context, fingerprint, event_id)
