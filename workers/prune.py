"""Keep the per-group Redis structures bounded: idle groups leave the live hashes and the feed.

`counts:live`, `feed:groups`, `feed:emitted` and `feed:last` hold one field per fingerprint. Without
pruning they grow with every group ever seen. The scheduler runs, after each successful count sync:

- `prune_idle_groups`: HSCANs the live hash from a saved cursor and drops groups idle for `live_group_idle` s
  (live_prune.lua; the DB keeps them). Paced: ~20 full passes per `live_group_idle`, at most
  `live_prune_step` fields per run, 200 per script call (prune_step says why).
- `rebase_new_groups`: a group that (re)appears in the live hash starts from 1 there; its exact total is
  DB count + pending deltas, set here right after the sync (live_rebase.lua), so totals shown stay exact.

`counts:pending` is never pruned: the sync job flushes it.
"""

from __future__ import annotations

import math

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db.models import ErrorGroup
from core.keys import Keys
from core.redis import as_str, load_script
from core.settings import Settings

REBASE_BATCH = 500  # fingerprints per DB query and script call
PASSES_PER_IDLE = 20  # full passes over the live hash per live_group_idle (see prune_step)
MIN_STEP = 100  # fields per run at least: a small hash is still looked at in a few runs
SCRIPT_FIELDS = 200  # fingerprints per live_prune.lua call: ~0.4 ms of Redis, never a long block


def prune_step(groups: int, settings: Settings) -> int:
    """Fields to look at in one run. A group turns idle only after live_group_idle s, so looking at each one
    PASSES_PER_IDLE times per live_group_idle finds it soon enough. Looking at every group every interval
    (as this did) was Redis work growing with the number of groups: in a soak at 16,000 groups and a 5 s
    interval, 3.5 HSCANs and 3,500 script lookups per second, each call blocking Redis ~2 ms (commandstats)."""
    paced = math.ceil(groups * settings.sync_interval * PASSES_PER_IDLE / settings.live_group_idle)
    return min(settings.live_prune_step, max(MIN_STEP, paced))


async def prune_idle_groups(redis: Redis, keys: Keys, settings: Settings) -> int:
    """One bounded pass: returns how many groups were pruned."""
    script = load_script(redis, "live_prune")
    cursor = int(await redis.get(keys.prune_cursor) or 0)
    step = prune_step(int(await redis.hlen(keys.live_counts)), settings)  # type: ignore[misc]
    seen = pruned = 0
    while seen < step:
        cursor, fields = await redis.hscan(keys.live_counts, cursor, count=min(1000, step))  # type: ignore[misc]
        fps = [as_str(f) for f in fields]
        seen += max(len(fps), 1)
        for i in range(0, len(fps), SCRIPT_FIELDS):  # short script calls: Redis serves ingest in between
            out = await script(keys=[keys.live_counts, keys.feed_emitted, keys.feed_last_seen, keys.feed_groups,
                                     keys.feed_dirty, keys.live_new],
                               args=[settings.live_group_idle, keys.feed_index(""), *fps[i:i + SCRIPT_FIELDS]])
            pruned += int(out[0])
        if cursor == 0:
            break
    await redis.set(keys.prune_cursor, cursor, ex=86_400)
    return pruned


async def rebase_new_groups(redis: Redis, engine: AsyncEngine, keys: Keys, limit: int = 20_000) -> int:
    """Run only right after a completed sync (no batch left unapplied); returns groups rebased."""
    script = load_script(redis, "live_rebase")
    done = 0
    for _ in range(max(1, limit // REBASE_BATCH)):
        raw: list[bytes] = await redis.srandmember(keys.live_new, REBASE_BATCH) or []  # type: ignore[misc,assignment]
        fps = [as_str(f) for f in raw]
        if not fps:
            break
        async with engine.connect() as conn:
            rows = await conn.execute(select(ErrorGroup.fingerprint, ErrorGroup.count)
                                      .where(ErrorGroup.fingerprint.in_(fps)))
            counts = {r[0]: int(r[1] or 0) for r in rows}
        args: list[str | int] = []
        for fp in fps:
            args += [fp, counts.get(fp, 0)]
        done += int(await script(keys=[keys.live_counts, keys.pending_counts, keys.feed_emitted, keys.live_new],
                                 args=args))
        if len(fps) < REBASE_BATCH:
            break
    return done
