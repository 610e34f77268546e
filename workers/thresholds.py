"""Threshold alerts: every FAULTLINE_ALERT_SCAN_INTERVAL one worker (Redis lock on the interval's bucket of Redis
time) sums the per-minute counts of the groups that moved in the last two minutes over each threshold rule's
window, and signals those at or over N; the evaluator (workers/alerts.py) turns signals into deliveries."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio import Redis

from core.alerts import signals as signal_stream
from core.backoff import Backoff
from core.keys import Keys
from core.redis import as_str
from core.settings import Settings
from workers.alerts import Evaluator

log = logging.getLogger("faultline.alerts")


async def scan_thresholds(redis: Redis, keys: Keys, by_project: dict[int, list[Any]]) -> int:
    """Signal every (threshold rule, group) at or over its N in its last M minutes (minute resolution: the
    current minute so far plus the M-1 before it); returns how many signals were added."""
    secs, _ = await redis.time()
    minute = int(secs) // 60
    added = 0
    for pid, rules in by_project.items():
        thresholds = [r for r in rules if r.kind == "threshold"]
        if not thresholds:
            continue
        prefix = f"{keys.alert_minutes_prefix}{pid}:"
        recent = set()
        for m in (minute - 1, minute):
            recent |= {as_str(f) for f in await redis.hkeys(prefix + str(m))}  # type: ignore[misc]
        fps = sorted(recent)
        for rule in thresholds:
            for start in range(0, len(fps), 500):
                chunk = fps[start:start + 500]
                pipe = redis.pipeline(transaction=False)
                for m in range(minute - rule.window_minutes + 1, minute + 1):
                    pipe.hmget(prefix + str(m), chunk)
                for fp in chunk:
                    pipe.exists(keys.alert_cooldown(rule.id, fp))
                replies = await pipe.execute()
                sums = [sum(int(v or 0) for v in col) for col in zip(*replies[:rule.window_minutes], strict=True)]
                cooling = replies[rule.window_minutes:]
                for fp, total, cool in zip(chunk, sums, cooling, strict=True):
                    if total >= rule.threshold and not cool:
                        await signal_stream.add(redis, keys, "threshold", pid, fp, total, rule_id=rule.id)
                        added += 1
    return added


async def scan_forever(evaluator: Evaluator, settings: Settings) -> None:
    """One scan per interval across all workers (SET NX on the interval's bucket of Redis time)."""
    backoff = Backoff.for_loop("threshold scan", log, settings)
    every = settings.alert_scan_interval
    while True:
        try:
            secs, micros = await evaluator.redis.time()
            now = secs + micros / 1e6
            bucket = int(now // every)
            if await evaluator.redis.set(evaluator.keys.alert_scan_lock(bucket), evaluator.name, nx=True,
                                         px=int(every * 2000)):
                await scan_thresholds(evaluator.redis, evaluator.keys, await evaluator.rules.get())
            backoff.ok()
            await asyncio.sleep(max(0.05, (bucket + 1) * every - now))
        except Exception as exc:
            await backoff.failed(exc)
