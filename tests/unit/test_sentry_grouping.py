"""core/sentry normalisation and grouping: what a Sentry user expects to be one issue."""

from __future__ import annotations

from typing import Any

import orjson

from core.events import MAX_CONTEXT_BYTES
from core.sentry.normalize import to_log_error


def frame(fn: str, line: int, in_app: bool = True, module: str = "app.views") -> dict[str, Any]:
    return {"function": fn, "module": module, "filename": module.replace(".", "/") + ".py", "lineno": line,
            "in_app": in_app}


def exc_event(kind: str, value: str, frames: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"event_id": "c" * 32, "level": "error", "platform": "python",
            "exception": {"values": [{"type": kind, "value": value, "stacktrace": {"frames": frames}}]}, **extra}


def fp(event: dict[str, Any]) -> str:
    out = to_log_error(event).fingerprint
    assert out is not None
    return out


def test_in_app_frames_group_without_line_numbers_or_data() -> None:
    lib = frame("request", 99, in_app=False, module="requests.api")
    a = exc_event("KeyError", "'user 1'", [frame("handler", 10), frame("load", 20), lib])
    b = exc_event("KeyError", "'order 77'", [frame("handler", 14), frame("load", 31), {**lib, "lineno": 5}])
    assert fp(a) == fp(b)
    assert fp(a) != fp(exc_event("ValueError", "'user 1'", [frame("handler", 10), frame("load", 20), lib]))
    assert fp(a) != fp(exc_event("KeyError", "'user 1'", [frame("handler", 10), frame("save", 20), lib]))
    # Library frames are not part of an in-app grouping.
    assert fp(a) == fp(exc_event("KeyError", "x", [frame("handler", 1), frame("load", 2),
                                                    frame("get", 3, in_app=False, module="urllib3")]))


def test_without_in_app_frames_type_and_normalised_value() -> None:
    lib = [frame("get", 3, in_app=False, module="urllib3")]
    a = exc_event("TimeoutError", "timed out after 30 s to 10.0.0.1:443", lib)
    b = exc_event("TimeoutError", "timed out after 12 s to 10.0.0.7:443", [])
    c = exc_event("TimeoutError", "connection refused", lib)
    assert fp(a) == fp(b) != fp(c)


def test_message_template_groups_formatted_messages() -> None:
    def msg(params: list[Any]) -> dict[str, Any]:
        return {"logentry": {"message": "user %s failed login from %s", "params": params}, "level": "warning"}

    one, two = to_log_error(msg(["bob", "a"])), to_log_error(msg(["eve", "b"]))
    assert one.message == "user bob failed login from a" and one.level == "warning"
    assert one.fingerprint == two.fingerprint
    assert one.context is not None and one.context["sentry"]["logentry"]["message"] == "user %s failed login from %s"
    # A plain string message (the JS SDK's captureMessage), numbers normalised.
    assert fp({"message": "job 17 failed"}) == fp({"message": "job 99 failed"}) != fp({"message": "job ok"})


def test_custom_fingerprint_wins_and_default_expands() -> None:
    a = exc_event("KeyError", "x", [frame("handler", 10)])
    b = exc_event("ValueError", "y", [frame("other", 10)])
    assert fp({**a, "fingerprint": ["payments", "card-declined"]}) == fp({**b, "fingerprint": ["payments",
                                                                                                 "card-declined"]})
    assert fp({**a, "fingerprint": ["{{ default }}"]}) == fp(a)
    split_a = fp({**a, "fingerprint": ["{{ default }}", "tenant-1"]})
    assert split_a != fp(a) and split_a != fp({**a, "fingerprint": ["{{ default }}", "tenant-2"]})
    assert fp({**a, "fingerprint": ["{{ type }}"]}) == fp({**a, "value": "z", "fingerprint": ["{{ type }}"]})


def test_exception_chain_main_is_last_and_all_fields_kept() -> None:
    cause = {"type": "ConnectionError", "value": "db down", "stacktrace": {"frames": [frame("connect", 5)]}}
    main = {"type": "RuntimeError", "value": "could not save order 12", "module": "app",
            "stacktrace": {"frames": [frame("save", 9), frame("commit", 40)]}}
    event = {"event_id": "D" * 32, "platform": "python", "level": "fatal", "release": "1.2.3",
             "environment": "prod", "server_name": "web-1", "tags": {"region": "eu"},
             "user": {"id": "u1", "email": "a@b.c", "extra": "dropped"}, "sdk": {"name": "sentry.python",
                                                                                "version": "2.0"},
             "exception": {"values": [cause, main]}}
    item = to_log_error(event)
    assert item.message == "RuntimeError: could not save order 12"
    assert item.level == "fatal" and item.service == "python" and item.event_id == "d" * 32
    assert item.stack is not None and item.stack.rstrip().endswith("RuntimeError: could not save order 12")
    ctx = item.context["sentry"]  # type: ignore[index]
    assert [e["type"] for e in ctx["exception"]] == ["ConnectionError", "RuntimeError"]
    assert ctx["exception"][1]["frames"][-1] == {"function": "commit", "module": "app.views",
                                                 "filename": "app/views.py", "lineno": 40, "in_app": True}
    assert ctx["release"] == "1.2.3" and ctx["environment"] == "prod" and ctx["server_name"] == "web-1"
    assert ctx["tags"] == {"region": "eu"} and ctx["user"] == {"id": "u1", "email": "a@b.c"}
    assert ctx["sdk"] == {"name": "sentry.python", "version": "2.0"}
    # The chain is part of the grouping: the same main exception with another cause is another issue.
    other = {**event, "exception": {"values": [{**cause, "type": "OSError"}, main]}}
    assert fp(other) != fp(event)


def test_huge_events_fit_the_context_limit_and_keep_innermost_frames() -> None:
    frames = [frame(f"f{i}", i, module="m" * 300 + str(i)) for i in range(500)]
    item = to_log_error(exc_event("RecursionError", "deep " * 2000, frames, tags={f"t{i}": "v" * 300
                                                                                 for i in range(100)}))
    assert len(orjson.dumps(item.context)) <= MAX_CONTEXT_BYTES
    kept = item.context["sentry"].get("exception")  # type: ignore[index]
    assert kept is None or kept[-1]["frames"] == [] or kept[-1]["frames"][-1]["function"] == "f499"
    assert len(item.message) <= 8192


def test_hostile_shapes_do_not_crash() -> None:
    for event in [{}, {"exception": "x"}, {"exception": {"values": [1, None, {"stacktrace": "no"}]}},
                  {"logentry": {"message": "%s %s", "params": ["only one"]}}, {"tags": [["a", "b"], "bad", [1]]},
                  {"message": {"formatted": "legacy"}}, {"event_id": "not-a-uuid", "level": 3},
                  {"logentry": {"message": "%999999999s and %(x)s %d%%", "params": ["a", 5, 6]}},
                  {"message": "nul\x00inside", "tags": {"k\x00": "v\x00"}, "server_name": "a\x00"}]:
        item = to_log_error(event)
        assert item.message and item.fingerprint and item.fingerprint.startswith("sentry:")
        assert len(item.message) < 1000  # a width in a template is not honoured (no gigabyte strings)
        assert "\x00" not in orjson.dumps(item.model_dump()).decode()  # the ingest model refuses NULs
