"""Per-project event quotas and the new-group cap: what is stored where, and the overflow group.

The decision itself is made by the ingest script (core/scripts/ingest.lua), atomically with the count, so
a batch of 100 events costs 100 from the quota and an event is either counted or dropped, never both:
- quota: two GCRAs per project (per second, per minute). GCRA rather than a sliding log: one number per
  limit and project whatever the rate (a log of 300,000 events/min would be 300,000 entries), and it admits
  event by event, so a batch is split exactly at the quota (the rest is `rate_limited`). A project may send a
  full window's budget at once, then at the steady rate; Retry-After = when one more event fits.
- new groups: a sliding log per project (sorted set of the fingerprints created in the last hour, at most
  `cap` entries): exactly at most `cap` new groups in any rolling hour. Events of further new groups are
  counted into the project's overflow group (fingerprint below), not dropped.
The DB (table project_quotas) is the truth; Redis holds a copy (`Keys.quota_conf`) that the script reads;
API nodes copy it at start-up, and again when they see (once a minute) that Redis lost it.

Key shards (core/keys.py) on Redis Cluster: the script runs per shard and may touch that shard's slot only,
so every shard has its own copy of the overrides and its own GCRA state and new-group log, and admits
`ceil(limit / shards)` of each limit. Accuracy: a project spread over many groups gets its whole quota
(within +shards events of rounding); a project whose traffic sits in few groups gets only the share of the
shards those groups fall in (one hot group: 1/shards of the quota) - the price of one atomic single-slot
call per event and no cross-shard round trip on the hot path.
On one server (redis://, Sentinel) the shards share the global tag's copy, state and log (`homes`): one
script call carries every shard's events there, so quotas are exact per project whatever the shards, and a
call reads a project's quota once, not once per shard's section. Upgrading a sharded one-server stack
starts that shared state empty: for the first window a project may get one more burst and, for an hour,
`cap` more new groups; the shards' own dropped counters are still summed.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import asdict, dataclass
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import Table, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from core import deduphome
from core.db.models import ProjectQuota
from core.keys import Keys
from core.redis import as_str, replace_hash
from core.settings import Settings

_quotas: Table = ProjectQuota.__table__  # type: ignore[assignment]
FIELDS = ("per_second", "per_minute", "new_groups_per_hour")
# a field of the Redis copy that is always there once the DB was copied: its absence means Redis lost it
MIRRORED = "-"
REASONS = ("rate_limited", "overflow")


@dataclass(frozen=True)
class Quota:
    """A project's overrides: None = the setting's default, 0 = no limit."""

    per_second: int | None = None
    per_minute: int | None = None
    new_groups_per_hour: int | None = None

    def encode(self) -> str:
        """The Redis copy read by ingest.lua: "per_second|per_minute|new_groups_per_hour", empty = default."""
        return "|".join("" if v is None else str(v) for v in (self.per_second, self.per_minute,
                                                               self.new_groups_per_hour))

    def effective(self, settings: Settings) -> dict[str, int]:
        defaults = default_quota(settings)
        return {f: defaults[f] if getattr(self, f) is None else int(getattr(self, f)) for f in FIELDS}


def default_quota(settings: Settings) -> dict[str, int]:
    return {"per_second": settings.project_quota_per_second, "per_minute": settings.project_quota_per_minute,
            "new_groups_per_hour": settings.project_new_groups_per_hour}


def overflow_fingerprint(project_id: int) -> str:
    """The project's "too many new groups" group: 64 hex digits like every fingerprint, in a namespace no
    client fingerprint can reach (those are hashed with another scheme). ingest.lua computes the same."""
    return (hashlib.sha1(f"faultline:overflow:{project_id}".encode()).hexdigest()
            + hashlib.sha1(f"faultline:overflow2:{project_id}".encode()).hexdigest()[:24])


async def load_quotas(conn: AsyncConnection) -> dict[int, Quota]:
    rows = await conn.execute(select(_quotas.c.project_id, *(_quotas.c[f] for f in FIELDS)))
    return {int(r[0]): Quota(*r[1:]) for r in rows}


async def save_quota(conn: AsyncConnection, project_id: int, quota: Quota) -> None:
    """Replace the project's overrides (inside the caller's transaction); all-default removes the row."""
    await conn.execute(delete(_quotas).where(_quotas.c.project_id == project_id))
    if quota != Quota():
        await conn.execute(_quotas.insert().values(project_id=project_id, updated_at=time.time(), **asdict(quota)))


def homes(redis: Redis, keys: Keys) -> tuple[Keys, ...]:
    """The keys holding quota copies and state: every shard's own on a cluster, the shared ones on one server."""
    return (keys.root,) if deduphome.shared(redis, keys) else keys.all_shards


async def mirror(redis: Redis, keys: Keys, quotas: dict[int, Quota]) -> None:
    """Make every Redis copy equal to `quotas`, each in one transaction (never a moment without overrides)."""
    mapping = {MIRRORED: "1", **{str(pid): q.encode() for pid, q in quotas.items()}}
    for shard in homes(redis, keys):
        await replace_hash(redis, shard.quota_conf, mapping)


async def is_mirrored(redis: Redis, keys: Keys) -> bool:
    """Every copy is there (a failed-over or restarted node may have lost its part)."""
    found = await asyncio.gather(*(redis.hexists(s.quota_conf, MIRRORED) for s in homes(redis, keys)))  # type: ignore[misc]
    return all(found)


async def mirror_one(redis: Redis, keys: Keys, project_id: int, quota: Quota) -> None:
    for shard in homes(redis, keys):
        if quota == Quota():
            await redis.hdel(shard.quota_conf, str(project_id))  # type: ignore[misc]
        else:
            await redis.hset(shard.quota_conf, str(project_id), quota.encode())  # type: ignore[misc]


async def dropped_counts(redis: Redis, keys: Keys, project_ids: list[int]) -> dict[int, dict[str, int]]:
    """Per project: events dropped by its quota, and events counted into its overflow group."""
    if not project_ids:
        return {}
    fields = [f"{pid}:{reason}" for pid in project_ids for reason in REASONS]
    # every shard's own counters too on one server: those counted before the shared ones existed
    where = {s.dropped for s in (*keys.all_shards, *homes(redis, keys))}
    replies: list[list[Any]] = await asyncio.gather(*(redis.hmget(k, fields)  # type: ignore[misc]
                                                      for k in sorted(where)))
    out: dict[int, dict[str, int]] = {pid: {} for pid in project_ids}
    for n, field in enumerate(fields):
        pid, reason = field.split(":")
        out[int(pid)][reason] = sum(int(as_str(values[n])) for values in replies if values[n] is not None)
    return out
