"""Sentry envelopes (develop.sentry.dev/sdk/envelopes): a JSON header line, then items, each a JSON header
line and a payload. The payload is `length` bytes when the item header says so (then an optional newline),
else everything up to the next newline or the end. One pass over the body: linear, nothing copied twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

# The item types Sentry SDKs send that we accept but do not store (counted in faultline_sentry_items_total).
COUNTED_TYPES = frozenset({"transaction", "session", "sessions", "client_report", "attachment", "check_in",
                           "span", "profile", "replay_event", "replay_recording", "statsd", "user_report",
                           "feedback", "log", "otel_log"})
EVENT_TYPES = frozenset({"event", "transaction", "security", "feedback"})  # JSON payloads with the event limit
MAX_ITEMS = 1000  # an SDK sends a handful; this only bounds the work a hostile envelope can ask for


class EnvelopeError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(slots=True)
class Item:
    type: str
    headers: dict[str, Any]
    payload: bytes


def _json_line(line: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(line) if line.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(400, "invalid_envelope", f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise EnvelopeError(400, "invalid_envelope", f"{what} must be a JSON object")
    return value


def parse_envelope(body: bytes, max_event_bytes: int) -> tuple[dict[str, Any], list[Item]]:
    """(envelope header, items). Raises EnvelopeError: 400 for a malformed envelope (bad JSON header,
    `length` past the end, a bad `length`), 413 for an event-like item over `max_event_bytes`."""
    end = len(body)
    nl = body.find(b"\n")
    header = _json_line(body[: nl if nl >= 0 else end], "the envelope header")
    pos = end if nl < 0 else nl + 1
    items: list[Item] = []
    while pos < end:
        nl = body.find(b"\n", pos)
        line_end = end if nl < 0 else nl
        if body[pos:line_end].strip() == b"":  # blank line between items (or a trailing newline)
            pos = line_end + 1
            continue
        if len(items) >= MAX_ITEMS:
            raise EnvelopeError(413, "too_many_items", f"an envelope may carry at most {MAX_ITEMS} items")
        ih = _json_line(body[pos:line_end], f"the header of item {len(items)}")
        kind = ih.get("type")
        if not isinstance(kind, str) or not kind:
            raise EnvelopeError(400, "invalid_envelope", f"item {len(items)} has no type")
        start = line_end + 1
        length = ih.get("length")
        if length is not None:
            if not isinstance(length, int) or isinstance(length, bool) or length < 0:
                raise EnvelopeError(400, "invalid_envelope", f"item {len(items)} has an invalid length")
            if start + length > end:
                raise EnvelopeError(400, "truncated_envelope",
                                    f"item {len(items)} says {length} bytes but the envelope ends before")
            stop = start + length
            pos = stop + 1 if body[stop:stop + 1] == b"\n" else stop
            if pos == stop and stop < end:  # after `length` bytes comes a newline or the end, nothing else
                raise EnvelopeError(400, "invalid_envelope", f"item {len(items)} is longer than its length")
        else:
            nl = body.find(b"\n", start) if start <= end else -1
            stop = end if nl < 0 else nl
            pos = stop + 1
        if kind in EVENT_TYPES and stop - start > max_event_bytes:
            raise EnvelopeError(413, "item_too_large",
                                f"item {len(items)} ({kind}) is {stop - start} bytes; the limit is {max_event_bytes}")
        items.append(Item(kind, ih, body[start:stop] if start < stop else b""))
    return header, items


def event_payload(item: Item, index: int) -> dict[str, Any]:
    """The JSON object of an event item (400 when it is not one)."""
    try:
        value = orjson.loads(item.payload)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(400, "invalid_item", f"item {index} ({item.type}) is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise EnvelopeError(400, "invalid_item", f"item {index} ({item.type}) must be a JSON object")
    return value
