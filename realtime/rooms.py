"""Room requests from clients: parse, check against what the token may see, and read a snapshot.

Rooms: `project:<id>` (every group of a project) and `service:<id>:<service>` (one service of it);
`project:*` stands for every project the token may see. A request is all-or-nothing: one forbidden room
refuses the whole subscription, so a client never ends up half subscribed without knowing it.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from redis.asyncio import Redis

from core.access import Principal
from core.feed import decode_summary, project_room, service_room
from core.keys import Keys

MAX_ROOMS = 50
SNAPSHOT_MAX = 500  # groups sent back on subscribe, most recently seen first: a wall screen shows fewer
_ROOM = re.compile(r"^(?:project:(?P<pid>\d{1,9}|\*)"
                   r"|service:(?P<spid>\d{1,9}):(?P<svc>[^\x00-\x1f]{1,128}))$")


class RoomError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def answer(self) -> dict[str, Any]:
        return {"ok": False, "error": self.code, "message": str(self)}


def requested_rooms(data: Any) -> list[str]:
    """The rooms of a `subscribe`/`unsubscribe` payload: {"rooms": ["project:1", ...]}."""
    rooms = data.get("rooms") if isinstance(data, dict) else None
    if not isinstance(rooms, list) or not rooms or len(rooms) > MAX_ROOMS:
        raise RoomError("bad_request", f'send {{"rooms": [...]}} with 1 to {MAX_ROOMS} room names')
    if not all(isinstance(r, str) and _ROOM.match(r) for r in rooms):
        raise RoomError("bad_request", "a room is 'project:<id>', 'project:*' or 'service:<id>:<service>'")
    return list(dict.fromkeys(rooms))


def allowed_rooms(principal: Principal, rooms: list[str], projects: set[int]) -> list[str]:
    """Expand `project:*` and check every room; raises RoomError('forbidden') on the first refusal."""
    visible = sorted(p for p in projects if principal.may_see(p))
    out: list[str] = []
    for room in rooms:
        m = _ROOM.match(room)
        assert m is not None
        if m["pid"] == "*":
            out.extend(project_room(p) for p in visible)
            continue
        pid = int(m["pid"] or m["spid"])
        if pid not in projects or not principal.may_see(pid):
            # the same answer for "does not exist" and "not yours": no probing for project ids
            raise RoomError("forbidden", f"this token may not see room {room!r}")
        out.append(project_room(pid) if m["pid"] else service_room(pid, m["svc"]))
    return list(dict.fromkeys(out))


async def known_projects(redis: Redis, keys: Keys) -> set[int]:
    return {int(v) for v in await redis.hvals(keys.projects)}  # type: ignore[misc]


async def snapshot(redis: Redis, keys: Keys, rooms: list[str]) -> list[dict[str, Any]]:
    """Live view of the rooms' groups from Redis (exact totals now), newest activity first.

    Reads only the groups of the projects asked for: each project's feed index (a set of its fingerprints,
    written by ingest.lua on first sighting), then those summaries - never every group of every project.
    Sent with the subscribe answer; the client merges it with GET /errors and keeps the larger total, so
    a reconnecting client ends with no group missing whatever it missed while away. Every key shard holds
    its own groups' feed state: they are read concurrently and merged.
    """
    wanted_projects = {int(r.split(":")[1]) for r in rooms if r.startswith("project:")}
    wanted_services = {(int(r.split(":")[1]), r.split(":", 2)[2]) for r in rooms if r.startswith("service:")}
    parts = await asyncio.gather(*(_shard_snapshot(redis, shard, wanted_projects, wanted_services)
                                   for shard in keys.all_shards))
    groups = [g for part in parts for g in part]
    groups.sort(key=lambda g: g["last_seen"] or 0.0, reverse=True)
    return groups[:SNAPSHOT_MAX]


async def _shard_snapshot(redis: Redis, keys: Keys, wanted_projects: set[int],
                          wanted_services: set[tuple[int, str]]) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for pid in sorted(wanted_projects | {p for p, _ in wanted_services}):
        fps = list(await redis.smembers(keys.feed_index(pid)))  # type: ignore[misc]
        if not fps:
            continue
        for value in await redis.hmget(keys.feed_groups, fps):  # type: ignore[misc]
            meta = decode_summary(value)
            if meta and meta["project_id"] == pid and (
                    pid in wanted_projects or (pid, meta.get("service")) in wanted_services):
                groups.append(meta)
    if not groups:
        return []
    fps = [g["fingerprint"] for g in groups]
    totals = await redis.hmget(keys.live_counts, fps)  # type: ignore[misc]
    last = await redis.hmget(keys.feed_last_seen, fps)  # type: ignore[misc]
    for g, total, seen in zip(groups, totals, last, strict=True):
        g["count"] = int(total or 0)
        g["last_seen"] = float(seen) if seen else g.get("first_seen")
    return groups


async def build_index(redis: Redis, keys: Keys, step: int = 1000) -> int:
    """Once per Redis (an upgrade): index the summaries written before the per-project indexes existed.
    HSCAN in bounded steps; SADD is idempotent, so two nodes doing it at once is harmless."""
    return sum([await _build_shard_index(redis, shard, step) for shard in keys.all_shards])


async def _build_shard_index(redis: Redis, keys: Keys, step: int) -> int:
    if await redis.exists(keys.feed_index_built):
        return 0
    added, cursor = 0, 0
    while True:
        reply: Any = await redis.hscan(keys.feed_groups, cursor, count=step)  # type: ignore[misc]
        cursor, chunk = reply
        by_project: dict[int, list[Any]] = {}
        for fp, value in chunk.items():
            meta = decode_summary(value)
            if meta is not None:
                by_project.setdefault(meta["project_id"], []).append(fp)
        for pid, fps in by_project.items():
            added += await redis.sadd(keys.feed_index(pid), *fps)  # type: ignore[misc]
        if cursor == 0:
            break
    await redis.set(keys.feed_index_built, "1")
    return added
