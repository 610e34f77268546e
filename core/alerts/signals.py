"""The triage-signal stream: group transitions that may fire alerts, written off the ingest path.

Entries (all strings): kind (new_group | regression | spike | threshold), project_id, fingerprint, at (unix
ms), optional count (and rule_id for threshold, which one rule's scan decided). Capped with MAXLEN ~ 100,000
(at most a few per group and hour: new groups are capped per project, spikes and thresholds by cooldowns).

The feed coalescer calls `SignalWriter.publish` once per tick that moved something: one script call adds its
new_group and spike signals and, for projects that have threshold rules only, the per-minute counts the
threshold scan sums (workers/alerts.py).
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from core.keys import Keys
from core.redis import as_str, load_script

MAXLEN = 100_000
WINDOWS_REFRESH = 1.0  # s: a new threshold rule starts counting within this (plus the evaluator's refresh); one HKEYS


async def add(redis: Redis, keys: Keys, kind: str, project_id: int, fingerprint: str,
              count: int | float | None = None, **extra: Any) -> None:
    """One signal, timestamped now (unix ms)."""
    fields: dict[str, Any] = {"kind": kind, "project_id": project_id, "fingerprint": fingerprint,
                              "at": int(time.time() * 1000)}
    if count is not None:
        fields["count"] = count
    fields.update(extra)
    await redis.xadd(keys.group_signals, fields, maxlen=MAXLEN, approximate=True)  # type: ignore[arg-type]


class SignalWriter:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.script = load_script(redis, "alert_signals")
        self.windows: set[int] = set()  # projects with threshold rules (Keys.alert_windows)
        self._refreshed = 0.0

    async def counted_projects(self) -> set[int]:
        now = time.monotonic()
        if now - self._refreshed >= WINDOWS_REFRESH:
            raw = await self.redis.hkeys(self.keys.alert_windows)  # type: ignore[misc]
            self.windows = {int(as_str(p)) for p in raw}
            self._refreshed = now
        return self.windows

    async def publish(self, moved: list[tuple[int, str, int]], signals: list[tuple[str, int, str, Any]]) -> None:
        """moved: (project id, fingerprint, delta) of this tick; signals: (kind, project id, fingerprint, count)."""
        counted = await self.counted_projects()
        counts = [x for x in moved if x[0] in counted and x[2] > 0]
        if not counts and not signals:
            return
        args: list[Any] = [self.keys.alert_minutes_prefix, MAXLEN, len(counts)]
        for pid, fp, delta in counts:
            args += [pid, fp, delta]
        for kind, pid, fp, count in signals:
            args += [kind, pid, fp, "" if count is None else count]
        await self.script(keys=[self.keys.group_signals, self.keys.alert_windows], args=args)
