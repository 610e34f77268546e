"""The alert evaluator (every worker runs one): signals -> matching rules -> delivery tasks.

Signals come from the stream (core/alerts/signals.py) through the consumer group "alerts": each signal is
handled by one worker, acked after its deliveries are enqueued, and reclaimed from a worker that died first.
A delivery is enqueued only if its (rule, group) cooldown key could be set (alert_enqueue.lua: both in one
step), so a storm of signals, a redelivered signal or two workers racing still send ONE alert per cooldown.

new_group: the feed says "new" when a group enters the live hash, which is also what a group does when it
comes back after idle pruning (workers/prune.py) or after Redis lost its data. So it is confirmed against
the DB: new if the group is not stored yet or its first_seen is at most NEW_GROUP_SLACK s before the signal.
A returning group was idle for FAULTLINE_LIVE_GROUP_IDLE (24 h), far more than the slack; the cooldown is
a second guard. A group deleted by retention and seen again is new again.

threshold rules are scanned by workers/thresholds.py; their signals come through here like the others.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from core.alerts import rules as rule_store
from core.backoff import Backoff
from core.db.models import ErrorGroup
from core.keys import Keys
from core.redis import as_str, load_script
from core.settings import Settings
from core.tasks import alert_message

log = logging.getLogger("faultline.alerts")
NEW_GROUP_SLACK = 120.0  # s between an event's received_at and the feed's signal (node clocks, a busy tick)
MAX_SIGNAL_AGE = 3600.0  # s: older signals (a stream replayed after a long outage) alert nobody
RULES_REFRESH = 2.0  # s: a rule added or removed takes effect within this (one small SELECT per worker)
RECLAIM_IDLE_MS = 30_000  # a signal unacked this long belonged to a dead worker


class RuleCache:
    """Every rule, by project, read from the DB every RULES_REFRESH s; also keeps Keys.alert_windows (projects
    with threshold rules -> longest window) equal to the DB, which is what the feed counts minutes for."""

    def __init__(self, engine: AsyncEngine, redis: Redis, keys: Keys) -> None:
        self.engine, self.redis, self.keys = engine, redis, keys
        self.by_project: dict[int, list[Any]] = {}
        self.loaded = -RULES_REFRESH

    async def get(self) -> dict[int, list[Any]]:
        if time.monotonic() - self.loaded < RULES_REFRESH:
            return self.by_project
        async with self.engine.connect() as conn:
            rows = await rule_store.all_rules(conn)
        by_project: dict[int, list[Any]] = defaultdict(list)
        windows: dict[str, str] = {}
        for r in rows:
            by_project[int(r.project_id)].append(r)
            if r.kind == "threshold":
                windows[str(r.project_id)] = str(max(int(windows.get(str(r.project_id), 0)), r.window_minutes))
        stored = await self.redis.hgetall(self.keys.alert_windows)  # type: ignore[misc]
        current = {as_str(k): as_str(v) for k, v in stored.items()}
        if current != windows:
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(self.keys.alert_windows)
            if windows:
                pipe.hset(self.keys.alert_windows, mapping=windows)  # type: ignore[arg-type]
            await pipe.execute()
        self.by_project, self.loaded = dict(by_project), time.monotonic()
        return self.by_project


class Evaluator:
    def __init__(self, settings: Settings, redis: Redis, engine: AsyncEngine, name: str) -> None:
        self.settings, self.redis, self.engine, self.name = settings, redis, engine, name
        self.keys = Keys.from_settings(settings)
        self.rules = RuleCache(engine, redis, self.keys)
        self.enqueue = load_script(redis, "alert_enqueue")
        self.enqueued = 0

    async def ensure_group(self) -> None:
        try:  # from id 0: signals written before the first worker started are evaluated too
            await self.redis.xgroup_create(self.keys.group_signals, self.keys.alert_consumer_group, id="0",
                                           mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        backoff = Backoff.for_loop(f"alert evaluator {self.name}", log, self.settings)
        next_reclaim = 0.0
        mine = ">"  # "0" after a failure: first read again what this consumer holds unacked
        while True:
            try:
                if next_reclaim == 0.0:
                    await self.ensure_group()
                batch: list[tuple[bytes, dict[bytes, bytes]]] = []
                if time.monotonic() >= next_reclaim:
                    next_reclaim = time.monotonic() + 10.0
                    reply = await self.redis.xautoclaim(self.keys.group_signals, self.keys.alert_consumer_group,
                                                        self.name, RECLAIM_IDLE_MS, "0-0", count=200)
                    batch += [(i, f) for i, f in reply[1] if f]
                got: Any = await self.redis.xreadgroup(self.keys.alert_consumer_group, self.name,
                                                       {self.keys.group_signals: mine}, count=200,
                                                       block=None if mine == "0" else 1000)
                mine = ">"
                for _stream, entries in got or []:
                    batch += [(i, f) for i, f in entries if f]
                if batch:
                    await self.handle([{as_str(k): as_str(v) for k, v in f.items()} for _, f in batch])
                    await self.redis.xack(self.keys.group_signals, self.keys.alert_consumer_group,
                                          *[i for i, _ in batch])
                backoff.ok()
            except Exception as exc:
                mine = "0"
                if isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP"):
                    next_reclaim = 0.0  # Redis lost the stream: recreate the group on the next round
                await backoff.failed(exc)

    async def handle(self, entries: list[dict[str, str]]) -> int:
        """Enqueue the deliveries these signals call for; returns how many."""
        by_project = await self.rules.get()
        now = time.time()
        matched: list[tuple[Any, dict[str, Any]]] = []
        for e in entries:
            try:
                pid, at = int(e["project_id"]), int(e["at"]) / 1000
                sig: dict[str, Any] = {"kind": e["kind"], "project_id": pid, "fingerprint": e["fingerprint"], "at": at,
                       "count": float(e["count"]) if e.get("count") else None}
            except (KeyError, ValueError):
                log.warning("malformed signal ignored: %r", e)
                continue
            if now - at > MAX_SIGNAL_AGE:
                continue
            for rule in by_project.get(pid, []):
                if rule.kind == sig["kind"] and (rule.kind != "threshold" or str(rule.id) == e.get("rule_id")):
                    matched.append((rule, sig))
        matched = await self._confirm_new(matched)
        args: list[Any] = []
        for rule, sig in matched:
            alert: dict[str, Any] = {**sig, "delivery_id": uuid.uuid4().hex, "rule_id": rule.id}
            if sig["count"] is not None and sig["count"] == int(sig["count"]):
                alert["count"] = int(sig["count"])
            args += [self.keys.alert_cooldown(rule.id, sig["fingerprint"]), int(rule.cooldown * 1000),
                     alert_message(alert)]
        if not args:
            return 0
        n = int(await self.enqueue(keys=[self.keys.stream], args=args))
        self.enqueued += n
        return n

    async def _confirm_new(self, matched: list[tuple[Any, dict[str, Any]]]) -> list[tuple[Any, dict[str, Any]]]:
        fps = sorted({s["fingerprint"] for r, s in matched if r.kind == "new_group"})
        if not fps:
            return matched
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(ErrorGroup.fingerprint, ErrorGroup.first_seen)
                                      .where(ErrorGroup.fingerprint.in_(fps)))
            first = {fp: seen for fp, seen in rows}
        return [(r, s) for r, s in matched if r.kind != "new_group" or first.get(s["fingerprint"]) is None
                or first[s["fingerprint"]] >= s["at"] - NEW_GROUP_SLACK]
