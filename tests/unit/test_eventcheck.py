"""The hand-checked event (core/eventcheck.py) is a shortcut, never a second schema: whatever it accepts,
LogErrorIn accepts with the same values; what it declines goes to LogErrorIn. And core/jsoncheck.py's
path-less walk never passes a value the full walk refuses."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from core.eventcheck import FIELDS, quick_event
from core.events import MAX_CONTEXT_BYTES, LogErrorIn
from core.jsoncheck import JsonCheckError, check_value, is_clean

TEXT = st.one_of(st.text(max_size=12), st.sampled_from(["", "\x00", "a\x00b", " x ", "x" * 129, "x" * 513]))
EVENT_IDS = st.one_of(st.sampled_from(["0123456789abcdef0123456789abcdef", "0123456789ABCDEF0123456789ABCDEF",
                                       "01234567-89ab-cdef-0123-456789abcdef", " 0123456789abcdef0123456789abcdef",
                                       "{01234567-89ab-cdef-0123-456789abcdef}", "nope", "", "0" * 65]), TEXT)
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**65), max_value=2**65),
                   st.floats(allow_nan=True, allow_infinity=True), TEXT)
JSON = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                    st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)
VALUES = {"message": st.one_of(TEXT, st.integers(), st.none()), "stack": st.one_of(TEXT, st.none(), st.integers()),
          "service": st.one_of(TEXT, st.none()), "level": st.one_of(st.sampled_from(["error", "fatal", "ERROR", "x"]),
                                                                    st.none(), st.integers()),
          "context": st.one_of(st.none(), st.dictionaries(TEXT, JSON, max_size=4), JSON),
          "fingerprint": st.one_of(TEXT, st.none()), "event_id": st.one_of(EVENT_IDS, st.none(), st.integers()),
          "stacktrace": TEXT}
EVENTS = st.fixed_dictionaries({}, optional=VALUES)


def _pydantic(raw: dict[str, Any], depth: int) -> LogErrorIn | None:
    try:
        return LogErrorIn.model_validate(raw, context={"max_depth": depth})
    except ValidationError:
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(EVENTS, st.integers(min_value=1, max_value=4))
def test_accepted_by_hand_means_accepted_by_the_model_with_the_same_values(raw: dict[str, Any], depth: int) -> None:
    quick = quick_event(raw, depth)
    model = _pydantic(raw, depth)
    if quick is not None:
        assert model is not None, raw
        for field in FIELDS:
            assert getattr(quick, field) == getattr(model, field), field


def test_plain_events_take_the_short_way_with_the_models_defaults_and_id_form() -> None:
    raw = {"message": "boom", "event_id": "01234567-89AB-cdef-0123-456789abcdef", "context": {"a": [1, {"b": None}]}}
    quick = quick_event(raw, 32)
    assert quick is not None
    assert (quick.service, quick.level, quick.stack, quick.fingerprint) == ("default", "error", None, None)
    assert quick.event_id == "0123456789abcdef0123456789abcdef"
    model = LogErrorIn.model_validate(raw)
    assert all(getattr(quick, f) == getattr(model, f) for f in FIELDS)


@pytest.mark.parametrize("raw", [{"message": ""}, {"message": "x", "stacktrace": "y"}, {"message": "a\x00"},
                                 {"message": "x", "level": "ERROR"}, {"message": "x", "service": None},
                                 {"message": "x", "context": {"a": 2**64}}, {"message": "x", "context": [1]},
                                 {"message": "x", "context": {"s": "y" * MAX_CONTEXT_BYTES}},
                                 {"message": "x", "event_id": "nope"}, {"message": "x", "fingerprint": ""}])
def test_anything_doubtful_goes_to_the_model(raw: dict[str, Any]) -> None:
    assert quick_event(raw, 32) is None


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(JSON, st.integers(min_value=1, max_value=4), st.integers(min_value=1, max_value=12))
def test_the_pathless_walk_passes_nothing_the_full_walk_refuses(value: Any, depth: int, nodes: int) -> None:
    if is_clean(value, depth, nodes):
        check_value(value, depth, nodes)  # does not raise
    else:
        with pytest.raises(JsonCheckError):
            check_value(value, depth, nodes)
