"""The event model: what a client may send, and the internal event that travels to the workers.

The internal `Event` already has the slots of a Sentry event (exception chain with frames, tags, release,
environment), so Sentry ingest can fill it without a rewrite; the plain REST payload fills a subset.
"""

from __future__ import annotations

import itertools
import os
import re
import uuid
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from core.jsoncheck import JsonCheckError, check_string, check_value

MAX_MESSAGE = 8192
MAX_STACK = 65_536
MAX_SERVICE = 128
MAX_FINGERPRINT = 512
MAX_CONTEXT_BYTES = 16_384
MAX_TAGS = 50
# Default nesting limit of `context` (FAULTLINE_MAX_DEPTH overrides it through the validation context).
MAX_DEPTH = 32

Level = Literal["debug", "info", "warning", "error", "fatal"]
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def normalize_event_id(value: str) -> str:
    """Accept a UUID in any common spelling; return 32 lowercase hex digits (Sentry's form)."""
    if len(value) == 32 and _HEX32.match(value):  # already Sentry's form (the SDKs send it so): as it is
        return value
    candidate = value.strip().lower().replace("-", "")
    if _HEX32.match(candidate):
        return candidate
    try:
        return uuid.UUID(value).hex
    except ValueError:
        raise ValueError("event_id must be a UUID (32 hex digits, dashes optional)") from None


_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(4), "big"))


def _reseed() -> None:  # a forked child must not repeat its parent's ids
    global _ID_PREFIX, _ID_COUNTER
    _ID_PREFIX = os.urandom(8).hex()
    _ID_COUNTER = itertools.count(int.from_bytes(os.urandom(4), "big"))


os.register_at_fork(after_in_child=_reseed)


def new_event_id() -> str:
    """32 hex digits: 64 random bits per process + a 64-bit counter. Unique like a UUID4 across processes
    (a prefix collision needs ~4 billion processes), without a urandom syscall per event."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


class LogErrorIn(BaseModel):
    """The seed's payload for POST /errors/log, with a size limit on every field.

    Unknown fields are refused (422 naming them): a misspelt "stacktrace" used to be dropped silently and
    made a second group that looked like the first. Validate with context={"max_depth": n} to change the
    nesting limit of `context` (default MAX_DEPTH).
    """

    model_config = ConfigDict(extra="forbid")

    message: Annotated[str, StringConstraints(min_length=1, max_length=MAX_MESSAGE)]
    stack: Annotated[str, StringConstraints(max_length=MAX_STACK)] | None = None
    service: Annotated[str, StringConstraints(min_length=1, max_length=MAX_SERVICE)] = "default"
    level: Level = "error"
    context: dict[str, Any] | None = None
    fingerprint: Annotated[str, StringConstraints(min_length=1, max_length=MAX_FINGERPRINT)] | None = None
    event_id: Annotated[str, StringConstraints(max_length=64)] | None = None

    @field_validator("message", "stack", "service", "fingerprint", "event_id")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None:
            check_string(value, "the value")
        return value

    @field_validator("event_id")
    @classmethod
    def _event_id(cls, value: str | None) -> str | None:
        return None if value is None else normalize_event_id(value)

    @field_validator("context")
    @classmethod
    def _context(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        if value is None:
            return None
        max_depth = (info.context or {}).get("max_depth", MAX_DEPTH)
        too_big = f"context is larger than {MAX_CONTEXT_BYTES} bytes once serialised"
        try:
            check_value(value, max_depth, max_nodes=MAX_CONTEXT_BYTES)
        except JsonCheckError as exc:
            raise ValueError(too_big if "more than" in str(exc) else f"context {exc}") from None
        try:
            size = len(orjson.dumps(value))
        except (TypeError, orjson.JSONEncodeError) as exc:  # not reachable after the walk; never a 500
            raise ValueError(f"context cannot be serialised: {exc}") from None
        if size > MAX_CONTEXT_BYTES:
            raise ValueError(too_big)
        return value


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The upper bound is checked against settings.batch_max_events by the route (configurable). Items are
    # validated one by one by the route, so one bad event (even one that is not an object) is marked
    # invalid in its own result and does not fail the others.
    events: list[Any] = Field(min_length=1)


class Frame(BaseModel):
    filename: str | None = None
    function: str | None = None
    module: str | None = None
    lineno: int | None = None
    in_app: bool | None = None


class ExceptionInfo(BaseModel):
    type: str | None = None
    value: str | None = None
    module: str | None = None
    frames: list[Frame] = Field(default_factory=list)


class Event(BaseModel):
    """One accepted event, as the API hands it to the workers (and, later, as Sentry ingest will)."""

    event_id: str
    project_id: int
    fingerprint: str
    received_at: float
    message: str
    level: Level = "error"
    service: str = "default"
    stack: str | None = None
    context: dict[str, Any] | None = None
    # Sentry-shaped slots: innermost exception last, as in Sentry's `exception.values`.
    exception: list[ExceptionInfo] | None = None
    tags: dict[str, str] | None = None
    release: str | None = None
    environment: str | None = None
    platform: str | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(exclude_none=True))
