"""What one batch writes: a row per group (widened first/last seen) and only the samples that will be kept.

Why its own module: the batch writer (workers/writer.py) owns the queueing, the transaction and the
isolation of refused rows; this is the pure part, the same for any DB: the events in, the rows out.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

from core.events import Event
from core.fingerprint import error_type
from workers.taskevents import TaskEvent

AnyEvent = Event | TaskEvent  # plain events skip the model (workers/taskevents.py); Sentry events keep it


def group_rows(events: Sequence[AnyEvent]) -> tuple[dict[str, dict[str, Any]], dict[str, list[AnyEvent]]]:
    """fingerprint -> its group row (details of its first event in the batch, first/last seen over all of
    them), and fingerprint -> its events in the batch. The error type is found once per group, not per event."""
    groups: dict[str, dict[str, Any]] = {}
    per_group: dict[str, list[AnyEvent]] = {}
    for ev in events:
        fp = ev.fingerprint
        g = groups.get(fp)
        if g is None:
            exc_type = ev.exception[-1].type if ev.exception else error_type(ev.message, ev.stack)
            groups[fp] = {
                "fingerprint": fp, "project_id": ev.project_id, "message": ev.message,
                "error_type": (exc_type or None) and exc_type[:255], "service": ev.service,
                "level": ev.level, "first_seen": ev.received_at, "last_seen": ev.received_at,
            }
            per_group[fp] = [ev]
        else:
            at = ev.received_at
            if at < g["first_seen"]:
                g["first_seen"] = at
            elif at > g["last_seen"]:
                g["last_seen"] = at
            per_group[fp].append(ev)
    return groups, per_group


def kept_samples(per_group: dict[str, list[AnyEvent]], keep: int) -> list[dict[str, Any]]:
    """Only the samples that can be kept: a group keeps its `keep` newest (workers/retention.py trims the
    rest), so older events of a group in this batch are never written. Newest by received_at: a batch mixes
    tasks of several API nodes and stream shards, not in time order."""
    return [
        {"event_id": ev.event_id, "fingerprint": fp, "received_at": ev.received_at,
         "payload": ev.to_json().decode()}
        for fp, evs in per_group.items()
        for ev in (evs if len(evs) <= keep else heapq.nlargest(keep, evs, key=_received))
    ]


def _received(ev: AnyEvent) -> float:
    return ev.received_at
