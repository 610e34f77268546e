"""The local liveness file of a worker or scheduler: its own event loop writes it, an exec probe reads it.

The Redis heartbeat (core/heartbeat.py) shows a fleet's progress to operators, but a liveness probe that
reads it fails whenever Redis does, and the kubelet would then restart every worker and scheduler at once
for an outage their loops already ride out with backoff. This file needs nothing but the pod's own disk:

- `beat` older than heartbeat.TTL: the event loop is stuck (the beat task could not run).
- a worker whose consuming loop has done nothing for `worker_stall_after`: no fetch (an empty read counts:
  there was nothing to consume), no finished task, and no failed attempt either (a fetch that failed
  because Redis is down still shows the loop turning). Stuck, not waiting.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import orjson

STALE_AFTER = 20.0  # the Redis heartbeat's TTL: 10 missed beats of 2 s


def path(directory: Path, role: str, name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return directory / f"{role}-{safe}.json"


def write(directory: Path, role: str, name: str, fields: dict[str, float | int]) -> None:
    """Atomic (write + rename): the probe never reads half a file. Errors are the caller's to count."""
    target = path(directory, role, name)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(fields))
    os.replace(tmp, target)


def read(directory: Path, role: str, name: str) -> dict[str, float] | None:
    with contextlib.suppress(OSError, ValueError):
        raw = orjson.loads(path(directory, role, name).read_bytes())
        if isinstance(raw, dict):
            return {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float)}
    return None


def verdict(beat: dict[str, float] | None, role: str, stall_after: float,
            now: float | None = None) -> tuple[bool, str]:
    if beat is None:
        return False, "no liveness file (not started, or not writing it)"
    now = time.time() if now is None else now
    age = now - beat.get("beat", 0.0)
    if age > STALE_AFTER:
        return False, f"event loop stuck: last beat {age:.0f}s ago"
    if role != "worker":
        return True, f"alive: beat {age:.1f}s ago"
    last = max(beat.get(k, 0.0) for k in ("last_fetch", "last_done", "last_attempt", "started"))
    idle = now - last
    if idle > stall_after:
        return False, f"consumer stalled: no fetch, finished task or attempt for {idle:.0f}s"
    return True, f"alive: fetched {int(beat.get('fetched', 0))}, written {int(beat.get('written', 0))}, " \
                 f"errors {int(beat.get('errors', 0))}"
