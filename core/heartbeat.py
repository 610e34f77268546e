"""Liveness AND progress of background processes: each writes an expiring hash; an exec probe checks it.

A process whose event loop is stuck stops refreshing its key, and the key expires after `TTL`. A process
whose loop runs but whose consumer is dead (the failure a bare "I'm alive" key cannot show) keeps beating
with an old `last_fetch`: `faultline worker-check` compares it with the queue (see `stalled`). Like arq's
health key, the hash also carries counters: fetched, written, errors, in_progress.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict, dataclass, field

from redis.asyncio import Redis

from core import liveness
from core.backoff import Backoff
from core.keys import Keys
from core.redis import replace_hash
from core.settings import Settings

log = logging.getLogger("faultline.heartbeat")
INTERVAL = 2.0  # one small pipeline every 2 s: cheap, and worker-check sees progress within 2 s (the default
# of FAULTLINE_HEARTBEAT_INTERVAL, which may only shorten it)
TTL = 20  # 10 missed beats: a stuck loop, not a slow one


@dataclass
class Progress:
    """Counters a process updates as it works; the heartbeat publishes them. Times are epoch seconds."""

    started: float = field(default_factory=time.time)
    last_fetch: float = 0.0  # last successful read of the stream (an empty read counts: it reached Redis)
    last_done: float = 0.0  # last task finished, whatever its outcome
    last_attempt: float = 0.0  # last fetch that failed (Redis down): the loop still turns, it is not stuck
    fetched: int = 0
    written: int = 0  # events committed to the DB
    errors: int = 0  # loop errors and failed tasks
    in_progress: int = 0

    def mark_fetch(self, n: int) -> None:
        self.last_fetch = time.time()
        self.fetched += n

    def mark_attempt(self) -> None:
        self.last_attempt = time.time()
        self.errors += 1

    def mark_done(self, failed: bool = False) -> None:
        self.last_done = time.time()
        self.errors += failed

    def last_progress(self) -> float:
        """A worker busy with slow tasks does not fetch (its prefetch is full) but does finish tasks."""
        return max(self.last_fetch, self.last_done, self.started)


def fields(progress: Progress | None = None) -> dict[str, float | int]:
    out: dict[str, float | int] = {"pid": os.getpid(), "beat": round(time.time(), 3)}
    if progress is not None:
        out.update({k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(progress).items()})
    return out


async def beat_once(redis: Redis, keys: Keys, role: str, name: str, progress: Progress | None = None) -> None:
    key = keys.heartbeat(role, name)
    # written aside with its expiry and renamed over (also over a pre-progress plain-string key of an older
    # version): the key never exists without its expiry
    await replace_hash(redis, key, fields(progress), ttl=TTL)


async def beat_forever(redis: Redis, keys: Keys, role: str, name: str, settings: Settings,
                       progress: Progress | None = None) -> None:
    # Redis down: the key expires and `worker-check` (without --local) reports it, which is right for an
    # operator; the liveness file goes on; the beat resumes by itself.
    backoff = Backoff.for_loop(f"{role} {name} heartbeat", log, settings)
    backoff.give_up_after = None  # the consumer loops decide when to give up, not the beat
    while True:
        if settings.liveness_dir is not None:  # first, and whatever Redis does: the kubelet reads this one
            try:
                liveness.write(settings.liveness_dir, role, name, fields(progress))
            except OSError as exc:
                log.warning("%s %s: cannot write the liveness file: %s", role, name, exc)
        try:
            await beat_once(redis, keys, role, name, progress)
        except Exception as exc:
            if progress is not None:
                progress.errors += 1
            await backoff.failed(exc)
            continue
        backoff.ok()
        await asyncio.sleep(settings.heartbeat_interval)


async def read(redis: Redis, keys: Keys, role: str, name: str) -> dict[str, float] | None:
    raw = await redis.hgetall(keys.heartbeat(role, name))  # type: ignore[misc]
    if not raw:
        return None
    return {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}


def stalled(beat: dict[str, float], queued: int, stall_after: float, now: float | None = None) -> float | None:
    """Seconds without progress if the worker is stalled (nothing fetched or finished for `stall_after`
    while `queued` > 0), else None. An empty queue is never a stall: there is nothing to fetch."""
    last = max(beat.get("last_fetch", 0.0), beat.get("last_done", 0.0), beat.get("started", 0.0))
    idle = (now if now is not None else time.time()) - last
    return idle if queued > 0 and idle > stall_after else None


async def is_alive(redis: Redis, keys: Keys, role: str, name: str) -> bool:
    return bool(await redis.exists(keys.heartbeat(role, name)))


async def stop(redis: Redis, keys: Keys, role: str, name: str) -> None:
    await redis.delete(keys.heartbeat(role, name))
