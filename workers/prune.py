"""Keep the per-group Redis structures bounded: idle groups leave the live hashes and the feed.

`counts:live`, `feed:groups`, `feed:emitted` and `feed:last` hold one field per fingerprint. Without
pruning they grow with every group ever seen. The scheduler runs, after each successful count sync:

- `prune_idle_groups`: HSCANs the live hash from a saved cursor, at most `live_prune_step` fields per run
  (bounded work), and drops groups idle for `live_group_idle` s (live_prune.lua; the DB keeps them).
- `rebase_new_groups`: a group that (re)appears in the live hash starts from 1 there; its exact total is
  DB count + pending deltas, set here right after the sync (live_rebase.lua), so totals shown stay exact.

`counts:pending` is never pruned: the sync job flushes it.
"""

from __future__ import annotations

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db.models import ErrorGroup
from core.keys import Keys
from core.redis import as_str, load_script
from core.settings import Settings

REBASE_BATCH = 500  # fingerprints per DB query and script call


async def prune_idle_groups(redis: Redis, keys: Keys, settings: Settings) -> int:
    """One bounded pass: returns how many groups were pruned."""
    script = load_script(redis, "live_prune")
    cursor = int(await redis.get(keys.prune_cursor) or 0)
    seen = pruned = 0
    while seen < settings.live_prune_step:
        cursor, fields = await redis.hscan(  # type: ignore[misc]
            keys.live_counts, cursor, count=min(1000, settings.live_prune_step))
        fps = [as_str(f) for f in fields]
        seen += max(len(fps), 1)
        if fps:
            out = await script(keys=[keys.live_counts, keys.feed_emitted, keys.feed_last_seen, keys.feed_groups,
                                     keys.feed_dirty, keys.live_new],
                               args=[settings.live_group_idle, *fps])
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
