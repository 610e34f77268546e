"""Plain events skip the pydantic model in the worker (workers/taskevents.py): they must come out exactly as the
model would make them, and anything that is not plain must still go through the model (and its errors)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from core.events import Event
from workers.taskevents import TaskEvent, decode


def plain(**changes: Any) -> dict[str, Any]:
    """An event as api/ingest.py enqueues it."""
    event: dict[str, Any] = {"event_id": "a" * 32, "project_id": 3, "fingerprint": "f" * 64,
                             "received_at": time.time(), "message": "KeyError: 'user_id' é 🚀", "level": "fatal",
                             "service": "checkout", "stack": 'File "app.py", line 3\n  raise',
                             "context": {"request_id": 7, "empty": None, "nested": [None, {"x": None}]}}
    event.update(changes)
    return {k: v for k, v in event.items() if v is not ...}


@pytest.mark.parametrize("raw", [plain(), plain(stack=...), plain(context=...), plain(stack=None, context=None)])
def test_a_plain_event_is_what_the_model_makes_of_it(raw: dict[str, Any]) -> None:
    raw = orjson.loads(orjson.dumps(raw))  # as the worker reads it off the stream
    fast, model = decode(raw), Event.model_validate(raw)
    assert isinstance(fast, TaskEvent)
    assert fast.to_json() == model.to_json()  # the stored sample, byte for byte
    for name in ("event_id", "project_id", "fingerprint", "received_at", "message", "level", "service", "stack",
                 "exception"):
        assert getattr(fast, name) == getattr(model, name), name


@pytest.mark.parametrize("raw", [
    plain(exception=[{"type": "KeyError", "frames": []}]),  # a Sentry event: its exception chain matters
    plain(level=...), plain(service=...),  # the model's defaults fill them in
    plain(project_id="3"), plain(received_at=17),  # the model coerces them
])
def test_anything_else_goes_through_the_model(raw: dict[str, Any]) -> None:
    out = decode(raw)
    assert isinstance(out, Event)
    assert out.to_json() == Event.model_validate(raw).to_json()


@pytest.mark.parametrize("raw", [plain(fingerprint=...), plain(level="loud"), plain(project_id=[1]),
                                 plain(message=None), plain(context=[1]), plain(level=["x"]), "not an object"])
def test_a_malformed_event_fails_as_the_model_says(raw: Any) -> None:
    with pytest.raises(ValidationError):
        decode(raw)
