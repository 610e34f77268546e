"""The worker's side of group states: reopen resolved / expired-ignored groups inside the batch writer's
transaction, then signal and announce each reopen after the commit (core/triage.py says why and how).

Exactly once: the reopen is a compare-and-set in the batch's transaction, so only one worker's commit makes
it; the group keeps `signal_pending` until the signal is known to be on the stream, and any later batch of
the same group (a redelivery of this one after a crash included) sends it again, which signal_once.lua turns
into a no-op if the first send got through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core.db import triage as db
from core.keys import Keys
from core.settings import Settings
from core.triage import Announcer, Transition, reopens

log = logging.getLogger("faultline.triage")


class Reopener:
    def __init__(self, settings: Settings, engine: AsyncEngine, redis: Redis, keys: Keys) -> None:
        self.engine, self.redis, self.keys = engine, redis, keys
        self.announcer = Announcer(settings, redis, keys)

    async def in_transaction(self, conn: AsyncConnection, newest: Mapping[str, float]) -> list[Transition]:
        """`newest`: fingerprint -> newest event time in the batch. Returns the transitions to signal after
        the commit: reopens made here, and earlier ones whose signal may not have gone out."""
        rows = await db.reopen_candidates(conn, list(newest))
        if not rows:
            return []
        live = await self._live_counts([r.fingerprint for r in rows])  # rare: only groups not unresolved
        out: list[Transition] = []
        at_ms = int(time.time() * 1000)
        for r in rows:
            count = live.get(r.fingerprint, int(r._mapping["count"] or 0))  # Row.count is a tuple method
            if r.state == "unresolved":  # signal_pending: a reopen committed earlier, maybe never signalled
                out.append(Transition(r.fingerprint, int(r.project_id or 0), r.service,
                                      round(r.state_changed_at * 1000), count))
            elif (reopens(r.state, r.state_changed_at, r.ignore_until, r.ignore_until_count,
                          newest[r.fingerprint], count)
                  and await db.reopen(conn, r, at_ms)):
                out.append(Transition(r.fingerprint, int(r.project_id or 0), r.service, at_ms, count))
        return out

    async def _live_counts(self, fps: list[str]) -> dict[str, int]:
        """Totals Redis has counted (ingest counts before the worker sees an event, so these include it)."""
        if not fps:
            return {}
        out: dict[str, int] = {}
        for k, part in self.keys.by_shard(fps):  # a group's live total is in its key shard
            values = await self.redis.hmget(k.live_counts, part)  # type: ignore[misc]
            out.update((fp, int(v)) for fp, v in zip(part, values, strict=True) if v is not None)
        return out

    async def after_commit(self, transitions: Sequence[Transition]) -> None:
        """Signal, announce, then mark signalled. A failure leaves signal_pending set: the next batch of the
        group retries; nothing here fails the batch, whose data is committed."""
        if not transitions:
            return
        done: list[Transition] = []
        for t in transitions:
            try:
                if await self.announcer.signal(t):
                    log.info("group %s regressed (project %d)", t.fingerprint[:12], t.project_id)
                done.append(t)
            except Exception as exc:
                log.warning("regression signal of %s not sent (retried with the group's next batch): %s",
                            t.fingerprint[:12], exc)
        try:
            groups: list[dict[str, Any]] = [{"fingerprint": t.fingerprint, "project_id": t.project_id,
                                              "service": t.service, "state": "unresolved", "regressed": True}
                                             for t in transitions]
            await self.announcer.announce(groups, time.time())
        except Exception as exc:  # the live feed is best effort; GET /errors has the state
            log.warning("error:state not emitted: %s", exc)
        if done:
            try:
                async with self.engine.begin() as conn:
                    for t in sorted(done, key=lambda t: t.fingerprint):
                        await db.signalled(conn, t.fingerprint, t.at_ms)
            except Exception as exc:
                log.warning("could not mark %d regression signals as sent (re-sent, once): %s", len(done), exc)
