"""The live feed's write side: one coalescer turns Redis counters into a few Socket.IO messages per second.

Why not emit from the hot path or from the workers' after-commit hook: at 5,000 events/s that is 5,000
messages/s per client, and worker hooks run at least once (a redelivered batch would count twice). Instead
ingest.lua SADDs each counted fingerprint to a dirty set, atomically with its count. Every `feed_interval`
(250 ms) the coalescer that holds the lease SPOPs the dirty set and reads the exact live totals in ONE script
(feed_take.lua), then emits per room: `error:new` (groups seen for the first time), `error:count`
(fingerprint, absolute total, delta) and `error:spike`. So a room gets at most 3 messages per tick, 12/s,
however high the ingest rate; totals are absolute, so a client that missed messages converges on the next.

The coalescer runs in every API process and is elected by a Redis lease (2 s): if its node dies, another
takes over within 2 s. It emits through a write-only AsyncRedisManager (pub/sub), which every node's
Socket.IO server relays to its own clients. Nothing here imports realtime/: api and workers stay independent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
import socketio
from redis.asyncio import Redis

from core.alerts.signals import SignalWriter
from core.backoff import Backoff
from core.keys import Keys
from core.pubsub import make_manager
from core.redis import as_str, evalsha_pipelined, is_cluster, load_script
from core.settings import Settings
from core.spikes import SpikeDetector

log = logging.getLogger("faultline.feed")
LEASE_MS = 2000  # 8 ticks: survives a GC pause or loop lag, fails over in <= 2 s
TAKE_MAX = 5000  # fingerprints per take: bounds one script call (~5 ms); the rest waits for the next tick
META_CACHE_MAX = 100_000


def project_room(project_id: int) -> str:
    return f"project:{project_id}"


def service_room(project_id: int, service: str) -> str:
    return f"service:{project_id}:{service}"


def decode_summary(raw: bytes | str | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) and isinstance(value.get("project_id"), int) else None


class FeedCoalescer:
    def __init__(self, settings: Settings, redis: Redis, name: str,
                 manager: socketio.AsyncRedisManager | None = None, keys: Keys | None = None) -> None:
        self.keys = keys or Keys.from_settings(settings)
        self.redis = redis
        self.name = name
        self.interval = settings.feed_interval
        self.manager = manager or make_manager(settings, self.keys.socketio_channel, write_only=True)
        # Every error is retried: the live feed is best effort, and the API process it runs in must go on
        # serving ingest whatever happens here. One warning per outage, one "recovered" line after it.
        self.backoff = Backoff.for_loop(f"feed coalescer {name}", log, settings)
        self.backoff.give_up_after = None
        self.backoff.is_retryable = lambda exc: True
        self.take = load_script(redis, "feed_take")
        self.lease = load_script(redis, "feed_lease")
        self.meta: dict[str, dict[str, Any]] = {}
        self.spikes = SpikeDetector(warmup=settings.spike_warmup)
        self.signals = SignalWriter(redis, self.keys)  # new_group / spike signals and threshold counts
        self.leader = False
        self.messages = 0  # emitted (per room), for logs and tests

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            wait = self.interval
            try:
                held = await self.lease(keys=[self.keys.feed_lock], args=[self.name, LEASE_MS, "hold"])
                if bool(held) != self.leader:
                    log.info("feed coalescer %s: %s", self.name, "leading" if held else "standing by")
                    self.leader = bool(held)
                if self.leader:
                    await self.tick()
                self.backoff.ok()
            except Exception as exc:  # Redis outage: the dirty set keeps the work for the next tick
                wait = max(wait, self.backoff.next_delay(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
        if self.leader:
            with contextlib.suppress(Exception):
                await self.lease(keys=[self.keys.feed_lock], args=[self.name, LEASE_MS, "release"])

    async def tick(self) -> int:
        """One take per key shard (one round trip on one server) + emit; returns the number of messages emitted."""
        calls: list[tuple[list[Any], list[Any]]] = [
            ([k.feed_dirty, k.live_counts, k.feed_emitted, k.feed_last_seen], [TAKE_MAX]) for k in self.keys.all_shards]
        outs: list[Any]
        if len(calls) > 1 and not is_cluster(self.redis):
            # Key shards on one server: one round trip for every shard's take, not one call each (16 shards
            # made the leading process pay 64 script calls a second while idle; issue 12 must-show 6).
            outs = await evalsha_pipelined(self.redis, self.take, calls)
            for out in outs:
                if isinstance(out, Exception):
                    raise out
        else:  # a cluster's shards sit on several nodes: one call per shard, concurrently
            outs = await asyncio.gather(*(self.take(keys=keys, args=args) for keys, args in calls))
        now = max(float(out[0]) for out in outs)
        moved = [(as_str(out[i]), int(out[i + 1]), int(out[i + 2])) for out in outs for i in range(1, len(out), 3)]
        if not moved:
            return 0
        await self._load_meta([fp for fp, _, prev in moved if prev == 0 or fp not in self.meta])
        rooms: dict[str, dict[str, list[dict[str, Any]]]] = {}
        counted: list[tuple[int, str, int]] = []
        signals: list[tuple[str, int, str, Any]] = []
        for fp, total, prev in moved:
            meta = self.meta.get(fp)
            if meta is None:  # counted before the feed existed: no summary to route it by
                continue
            delta = max(total - prev, 0)
            targets = [project_room(meta["project_id"])]
            if meta.get("service"):
                targets.append(service_room(meta["project_id"], meta["service"]))
            spike = self.spikes.observe(fp, delta, now)
            counted.append((meta["project_id"], fp, delta))
            if prev == 0:  # new to the live hash: new, or back after idle pruning (the evaluator tells apart)
                signals.append(("new_group", meta["project_id"], fp, None))
            if spike:
                signals.append(("spike", meta["project_id"], fp, spike["rate"]))
            for room in targets:
                bucket = rooms.setdefault(room, {"new": [], "counts": [], "spikes": []})
                if prev == 0:
                    bucket["new"].append({**meta, "count": total, "last_seen": now})
                bucket["counts"].append({"fingerprint": fp, "total": total, "delta": delta})
                if spike:
                    bucket["spikes"].append({"fingerprint": fp, "total": total, **spike})
        sent = 0
        for room, b in rooms.items():
            # error:new before error:count of the same tick: a client learns a group before its counts
            if b["new"]:
                await self.manager.emit("error:new", {"room": room, "t": now, "groups": b["new"]}, room=room)
            await self.manager.emit("error:count", {"room": room, "t": now, "counts": b["counts"]}, room=room)
            if b["spikes"]:
                await self.manager.emit("error:spike", {"room": room, "t": now, "spikes": b["spikes"]},
                                        room=room)
            sent += 1 + bool(b["new"]) + bool(b["spikes"])
        self.messages += sent
        await self.signals.publish(counted, signals)
        return sent

    async def _load_meta(self, fps: list[str]) -> None:
        if not fps:
            return
        if len(self.meta) > META_CACHE_MAX:
            self.meta.clear()
        by_shard: dict[int, list[str]] = {}
        for fp in fps:
            by_shard.setdefault(self.keys.shard_of(fp), []).append(fp)
        shards = list(by_shard.items())
        replies: list[Any]
        if len(shards) > 1 and not is_cluster(self.redis):  # one server: one round trip for every shard
            pipe = self.redis.pipeline(transaction=False)
            for i, part in shards:
                pipe.hmget(self.keys.shard(i).feed_groups, part)
            replies = await pipe.execute()
        else:  # a cluster: per shard, concurrently (its failover handling is per call)
            replies = await asyncio.gather(*(self.redis.hmget(self.keys.shard(i).feed_groups, part)  # type: ignore[misc]
                                             for i, part in shards))
        for (_, part), raws in zip(shards, replies, strict=True):
            for fp, raw in zip(part, raws, strict=True):
                meta = decode_summary(raw)
                if meta is not None:
                    self.meta[fp] = meta

