"""Group states and what tells the rest of the system about a change of state.

A group is `unresolved` (new groups), `resolved` or `ignored` (forever, for a while, or until N more events).
A person changes it (PATCH /errors/{fp}); the workers reopen it: an event received after a resolve, or after
an ignore ran out, makes the group `unresolved` again with `regressed` set. That decision is taken in the
batch writer's transaction (workers/triage.py), never on the ingest path.

After the commit that reopened a group, two things leave here:
- a "regression" entry on the capped triage signal stream (Keys.group_signals), which alerting consumes.
  signal_once.lua adds it once per transition (marker key per group and transition time), so a worker that
  re-sends it after a crash or a redelivery never adds a second one;
- an `error:state` feed message to the group's rooms, so dashboards show the new state at once. Rare (one
  per transition), so it is emitted directly rather than through the coalescer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from core.feed import project_room, service_room
from core.keys import Keys
from core.pubsub import ResilientRedisManager, make_manager
from core.redis import load_script
from core.settings import Settings

log = logging.getLogger("faultline.triage")
State = Literal["unresolved", "resolved", "ignored"]
STATES: tuple[str, ...] = ("unresolved", "resolved", "ignored")
SIGNAL_CAP = 100_000  # entries kept in the signal stream (XADD MAXLEN ~): days of transitions
MARKER_TTL = 7 * 86_400  # a transition re-sent later than this (a week-old redelivery) could be added twice


@dataclass(frozen=True)
class Transition:
    """A group reopened by an event: `at` (unix ms) names the transition (the DB's state_changed_at)."""

    fingerprint: str
    project_id: int
    service: str | None
    at_ms: int
    count: int | None = None


def reopens(state: str, changed_at: float | None, ignore_until: float | None, ignore_until_count: int | None,
            newest_event: float, count: int | None) -> bool:
    """Does an event received at `newest_event` reopen a group in this state? `count`: the group's total
    now (for "ignored until N more events"), None if unknown."""
    if state == "resolved":
        # an event accepted before the resolve (still in the queue) says nothing about the fix
        return changed_at is None or newest_event > changed_at
    if state == "ignored":
        if ignore_until is not None and newest_event > ignore_until:
            return True
        return ignore_until_count is not None and count is not None and count >= ignore_until_count
    return False


class Announcer:
    """Sends signals and state messages for one process (a worker's writer, an API app)."""

    def __init__(self, settings: Settings, redis: Redis, keys: Keys) -> None:
        self.settings, self.redis, self.keys = settings, redis, keys
        self._script: AsyncScript | None = None
        self._manager: ResilientRedisManager | None = None

    @property
    def manager(self) -> ResilientRedisManager:
        if self._manager is None:  # created on first use: most processes never change a state
            # the manager for the URL's kind (a cluster needs SPUBLISH: core/pubsub.py)
            self._manager = make_manager(self.settings, self.keys.socketio_channel, write_only=True)
        return self._manager

    async def signal(self, t: Transition) -> bool:
        """XADD the "regression" entry once per transition; True if this call added it."""
        entry: list[Any] = ["kind", "regression", "project_id", str(t.project_id), "fingerprint", t.fingerprint,
                            "at", str(t.at_ms)]
        if t.count is not None:
            entry += ["count", str(t.count)]
        if self._script is None:
            self._script = load_script(self.redis, "signal_once")
        added = await self._script(keys=[self.keys.group_signals, self.keys.signal_sent(t.fingerprint, t.at_ms)],
                                  args=[MARKER_TTL, SIGNAL_CAP, *entry])
        return bool(added)

    async def announce(self, groups: list[dict[str, Any]], now: float) -> None:
        """error:state {room, t, groups: [{fingerprint, state, regressed}]} to each group's rooms. Best
        effort: a dashboard that misses it reads the state from GET /errors on its next (re)connect."""
        rooms: dict[str, list[dict[str, Any]]] = {}
        for g in groups:
            msg = {"fingerprint": g["fingerprint"], "state": g["state"], "regressed": bool(g["regressed"])}
            targets = [project_room(g["project_id"])] if g.get("project_id") is not None else []
            if targets and g.get("service"):
                targets.append(service_room(g["project_id"], g["service"]))
            for room in targets:
                rooms.setdefault(room, []).append(msg)
        for room, items in rooms.items():
            await self.manager.emit("error:state", {"room": room, "t": now, "groups": items}, room=room)
