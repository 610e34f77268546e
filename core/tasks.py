"""The contract between the API and the workers: task names and message shapes.

The API does not import taskiq to enqueue: its ingest script XADDs a message in taskiq's JSON wire format
(`TaskiqMessage`) straight onto the stream, in the same atomic step that dedups and counts the event.
"""

from __future__ import annotations

import orjson

from core.events import new_event_id

PERSIST_EVENTS = "faultline.persist_events"
ATTEMPT_LABEL = "attempt"


def message_frame(task_id: str | None = None) -> tuple[str, str]:
    """Head and tail of a persist_events message; the script puts the event JSON list between them."""
    tid = task_id or new_event_id()
    head = (
        '{"task_id":"' + tid + '","task_name":"' + PERSIST_EVENTS + '",'
        '"labels":{},"labels_types":null,"args":[],"kwargs":{"events":['
    )
    return head, "]}}"


def task_fingerprint(kwargs: object) -> str:
    """The fingerprint of a task's first event ("" if none): it names the stream a retry or a replay goes back
    to. On Redis Cluster every event of a task shares its key shard (ingest enqueues per shard); on one server
    a task may span shards (one ingest call carries them all), and any shard's stream is read by every worker."""
    events = kwargs.get("events") if isinstance(kwargs, dict) else None
    first = events[0] if isinstance(events, list) and events else None
    fp = first.get("fingerprint") if isinstance(first, dict) else None
    return fp if isinstance(fp, str) else ""


def persist_message(events: list[dict[str, object]], task_id: str | None = None) -> bytes:
    head, tail = message_frame(task_id)
    return (head + ",".join(orjson.dumps(e).decode() for e in events) + tail).encode()


DELIVER_ALERT = "faultline.deliver_alert"


def alert_message(alert: dict[str, object]) -> bytes:
    """A deliver_alert task (workers/alerts.py); its task id is the delivery id receivers see."""
    return orjson.dumps({"task_id": alert["delivery_id"], "task_name": DELIVER_ALERT, "labels": {},
                         "labels_types": None, "args": [], "kwargs": {"alert": alert}})
