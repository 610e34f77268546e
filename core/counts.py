"""Exact group counts for readers: the DB's count plus what Redis holds that the DB does not have yet.

A group's true count is split between the DB (`error_groups.count`, moved there by the sync job every
`sync_interval`) and Redis: the pending hash ingest counts into, and flushing batches a sync renamed aside
but has not applied (or applied, and not yet deleted). Reading DB count alone lags by up to 30 s; adding
Redis blindly can count a batch twice. The recipe, exact whatever the sync does meanwhile:

1. snapshot Redis atomically (counts_snapshot.lua): pending deltas, every flushing batch, the sync generation;
2. read the DB counts AND which of those batches the ledger already holds, in ONE statement (one snapshot);
3. read the generation again: if a sync renamed the pending hash in between, those pending deltas may now be
   in the DB as a new batch that step 1 did not see as one: start again (syncs are seconds apart).

count = DB count + pending + every flushing batch the ledger does not hold yet.

With several key shards (core/keys.py) every shard is snapshotted (concurrently, each atomic) and every
shard's generation checked: a group's counts normally live in its own shard, but its project's overflow
group (core/ratelimit/quota.py) is counted in the shard of each event that overflowed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

from redis.asyncio import Redis
from sqlalchemy import Select, String, cast, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db.models import AppliedBatch, ErrorGroup, GroupHour
from core.keys import Keys
from core.redis import as_str, load_script

ATTEMPTS = 5
PENDING = ":pending:"  # never a batch id (those are hex)
HOUR_SEPARATOR = "@"  # pending-hash fields "<fp>@<project>@<hour>" are hour buckets (ingest.lua); "<fp>" counts


HourKey = tuple[int, str, int]  # (project id, fingerprint, hour since the epoch)


def split_deltas(raw: Mapping[bytes | str, bytes | str | int]) -> tuple[dict[str, int], dict[HourKey, int]]:
    """A pending/flushing hash as ({fingerprint: delta}, {(project id, fingerprint, hour): delta})."""
    groups: dict[str, int] = {}
    hours: dict[HourKey, int] = {}
    for field, value in raw.items():
        name = as_str(field)
        if HOUR_SEPARATOR in name:
            fp, pid, hour = name.split(HOUR_SEPARATOR)
            hours[(int(pid), fp, int(hour))] = int(value)
        else:
            groups[name] = int(value)
    return groups, hours


def hour_field(project_id: int, fingerprint: str, hour: int) -> str:
    return f"{fingerprint}{HOUR_SEPARATOR}{project_id}{HOUR_SEPARATOR}{hour}"


class CountReader:
    def __init__(self, redis: Redis, engine: AsyncEngine, keys: Keys) -> None:
        self.redis, self.engine, self.keys = redis, engine, keys
        self.script = load_script(redis, "counts_snapshot")

    async def exact(self, fingerprints: Sequence[str]) -> dict[str, int]:
        """fingerprint -> exact count, for the groups that have a DB row (others are left out)."""
        fps = list(dict.fromkeys(fingerprints))
        if not fps:
            return {}
        rows = select(literal("g").label("kind"), ErrorGroup.fingerprint.label("id"),
                      ErrorGroup.count.label("n")).where(ErrorGroup.fingerprint.in_(fps))
        return await self._exact(fps, rows)

    async def hours(self, project_id: int, fingerprint: str, first_hour: int) -> dict[int, int]:
        """hour -> exact events of one group in that hour (hours since the epoch, from `first_hour` to now);
        hours without events are left out. The same recipe as `exact`, over the hour-bucket fields."""
        now_hour = int(time.time() // 3600) + 1  # +1: another node's clock may be an hour ahead at :59:59
        hours = range(first_hour, now_hour + 1)
        fields = [hour_field(project_id, fingerprint, h) for h in hours]
        rows = select(literal("g").label("kind"), cast(GroupHour.hour, String).label("id"),
                      GroupHour.count.label("n")).where(
            GroupHour.project_id == project_id, GroupHour.fingerprint == fingerprint, GroupHour.hour >= first_hour)
        exact = await self._exact(fields, rows, every_field=True)
        by_field = dict(zip(fields, hours, strict=True))
        return {by_field[f]: n for f, n in exact.items() if n}

    async def _exact(self, fields: list[str], db_rows: Select[str, str, int],
                     every_field: bool = False) -> dict[str, int]:
        """field -> DB value + Redis deltas not in the DB yet. `db_rows` selects (kind "g", id, n) with ids
        named like `fields` (hour buckets: the hour number, mapped back here). `every_field`: fields without
        a DB row count from 0 (hour buckets), else they are left out (groups)."""
        for _ in range(ATTEMPTS):
            gen, redis_extra = await self._snapshot(fields)
            db, applied = await self._db(db_rows, list(redis_extra))
            now = await asyncio.gather(*(self.redis.get(k.sync_generation) for k in self.keys.all_shards))
            if tuple(as_str(g or b"0") for g in now) != gen:
                continue
            db = _by_field(fields, db)
            out = {}
            for f in fields:
                if f in db or every_field:
                    out[f] = db.get(f, 0) + sum(v.get(f, 0) for bid, v in redis_extra.items() if bid not in applied)
            return out
        # Syncs kept racing us (they are seconds apart, so this is rare): the DB alone is never double.
        db, _ = await self._db(db_rows, [])
        return _by_field(fields, db)

    async def _snapshot(self, fps: list[str]) -> tuple[tuple[str, ...], dict[str, dict[str, int]]]:
        """-> generation per shard, {batch id (or PENDING + shard for a pending hash): {fp: delta}}"""
        replies = await asyncio.gather(*(
            self.script(keys=[k.pending_counts, k.flushing_batches, k.sync_generation], args=fps)
            for k in self.keys.all_shards))
        n = len(fps)
        gens = []
        extra: dict[str, dict[str, int]] = {}
        for shard, raw in enumerate(replies):
            gens.append(as_str(raw[0]))
            extra[f"{PENDING}{shard}"] = _deltas(fps, raw[1:1 + n])
            i = 1 + n
            while i < len(raw):
                extra[as_str(raw[i])] = _deltas(fps, raw[i + 1:i + 1 + n])
                i += 1 + n
        return tuple(gens), extra

    async def _db(self, rows: Select[str, str, int], batch_ids: list[str]) -> tuple[dict[str, int], set[str]]:
        stmt = rows
        real = [b for b in batch_ids if not b.startswith(PENDING)]
        if real:
            ledger = select(literal("b").label("kind"), AppliedBatch.batch_id.label("id"),
                            literal(0).label("n")).where(AppliedBatch.batch_id.in_(real))
            stmt = union_all(rows, ledger)  # type: ignore[assignment]
        async with self.engine.connect() as conn:
            found = list(await conn.execute(stmt))
        db = {r.id: int(r.n or 0) for r in found if r.kind == "g"}
        return db, {r.id for r in found if r.kind == "b"}


def _by_field(fields: list[str], db: dict[str, int]) -> dict[str, int]:
    """DB ids as the Redis field names: group rows are named by fingerprint already; hour rows by their hour."""
    if not fields or HOUR_SEPARATOR not in fields[0]:
        return db
    return {f: db[hour] for f in fields if (hour := f.rsplit(HOUR_SEPARATOR, 1)[1]) in db}


def _deltas(fps: list[str], values: list[bytes | str]) -> dict[str, int]:
    return {fp: int(v) for fp, v in zip(fps, values, strict=True) if int(v)}
