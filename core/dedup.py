"""Dedup identity and compact job state of accepted events (ingest.lua, dedup_state.lua).

Why not one key per event id (the old `{fl}:ev:<id>`): a key costs ~100 B in Redis, 90 MB for the 900 s
window at 1,000 events/s. Instead an event is remembered as a 6-byte digest of (project_id, event_id) in a
small hash, so ids of different projects never collide and an entry costs ~15-20 B:

    {fl}:dd:g<generation>:<shard>   field = 6-byte digest, value = (token * 128 + bucket % 128) * 8 + state

(`{fl}` = on Redis Cluster the hash tag of the key shard of the event's fingerprint, core/keys.py: an
event's dedup entry lives beside its group's counts, so ingest stays one single-slot script call per key
shard; on one server the global tag, for every shard: core/deduphome.py.)

- Time buckets of ceil(ttl / DEDUP_BUCKETS) s of Redis time (one clock for every node). An id is valid while
  the bucket it was written in is the current one or one of the DEDUP_BUCKETS before it, so it is
  remembered for at least `dedup_ttl` s and at most one bucket more.
- A generation is DEDUP_BUCKETS buckets; an id is written into a hash of the current generation, so the
  window spans two generations and a lookup reads at most TWO hashes (core/scripts/_dedup.lua). The
  layout before kept one hash per bucket and read DEDUP_BUCKETS + 1 of them for every new id: the script's
  time per event doubled while the window filled (x2.1 at 10 buckets, `python -m loadtest.dedup_cost`),
  over the first 15 minutes of every run.
- Memory stays flat within ~a bucket of the id part: the previous generation's expired entries are swept
  by the lookups that read their hash (about two sweeps per hash and bucket), and a hash expires when its
  newest entry leaves the window.
- Each generation is split into shards so every hash stays a listpack (hash-max-listpack-entries, 128 by
  default): a new generation gets as many shards as the previous generation's count / 64 (scaled to a
  whole generation when it started part-way), rounded up to a power of two, at least 256, stored in the
  meta hash (`{fl}:dd:meta`), so the structure follows the ingest rate. A burst far above the previous
  generation's rate (or a busy first generation after a start) makes that generation's hashes hashtables
  (~3x the bytes) until it expires: bounded, and the next one is sized for it.
- Upgrading from the bucket layout (before 2026-11-29): the new scripts do not read the old hashes, so an
  event resent across the upgrade, within one window of its first send, may be counted twice; the old
  hashes expire by themselves.
- `token` identifies the script call that wrote the entry: an ambiguous call (timeout after sending) is
  re-run with the same token, and the re-run tells "I counted this earlier" from "someone else did".
- `state` is the job state GET /jobs/{id} reports; the worker and the retry middleware update it in place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from hashlib import blake2b
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from core import deduphome
from core.keys import Keys
from core.redis import load_script
from core.settings import Settings

DIGEST_BYTES = 6  # 48 bits per shard: a false duplicate among ~1,000 ids checked has p ~ 4e-12
TOKEN_BITS = 20  # the value (token, bucket % 128, state: 30 bits) stays a 32-bit listpack integer

STATES = ("queued", "running", "succeeded", "retrying", "dead")
QUEUED, RUNNING, SUCCEEDED, RETRYING, DEAD = range(5)


class DedupId(NamedTuple):
    """A tuple, not a frozen dataclass: built once per event on the ingest path, where the dataclass's
    __init__ (object.__setattr__ per field) cost twice the hash itself (~3 us vs ~1.5 us per event)."""

    seed: int  # 32-bit; the script picks the shard as seed % shards
    digest: bytes  # the hash field

    def args(self) -> list[int | bytes]:
        return [self.seed, self.digest]


def dedup_id(project_id: int, event_id: str) -> DedupId:
    return DedupId(*dedup_args(project_id, event_id))


def dedup_args(project_id: int, event_id: str) -> tuple[int, bytes]:
    """(seed, digest) as a plain tuple: the ingest path's form, half the cost of building a DedupId."""
    d = blake2b(f"{project_id}:{event_id}".encode(), digest_size=4 + DIGEST_BYTES).digest()
    return int.from_bytes(d[:4], "big"), d[4:]


def state_name(code: int) -> str:
    return STATES[code] if 0 <= code < len(STATES) else "unknown"


ScriptCall = tuple[list[Any], list[Any]]  # keys, args


class JobStates:
    """Reads and sets the job state kept next to each remembered event (one script call per batch)."""

    def __init__(self, redis: Redis, keys: Keys, settings: Settings) -> None:
        self.keys = keys
        self.settings = settings
        self.redis = redis
        self._script: AsyncScript | None = None  # registered on first use: a writer may never need it
        self.legacy = deduphome.Legacy(redis, keys)

    @property
    def script(self) -> AsyncScript:
        if self._script is None:
            self._script = load_script(self.redis, "dedup_state")
        return self._script

    async def _calls(self, mode: str, code: int, sections: list[tuple[int, list[DedupId]]],
                     shared_ids: list[DedupId] | None = None) -> list[ScriptCall]:
        """dedup_state.lua's (keys, args): on one server ONE call and section, the shared layout's (plus each
        shard's old layout while it may hold ids, core/deduphome.py); a call per shard on a cluster (a
        script's keys must share a slot there). `shared_ids`: the shared layout's ids, if not all sections'."""
        layouts: list[tuple[Keys, list[DedupId]]]
        if deduphome.shared(self.redis, self.keys):
            layouts = [(self.keys.root, shared_ids or [i for _, ids in sections for i in ids])]
            if await self.legacy.active():
                layouts += [(self.keys.shard(shard), ids) for shard, ids in sections]
            groups = [layouts]
        else:  # a cluster, or one shard
            groups = [[(self.keys.shard(shard), ids)] for shard, ids in sections]
        s = self.settings
        calls: list[ScriptCall] = []
        for group in groups:
            args: list[Any] = [s.dedup_ttl, s.dedup_buckets, mode, code]
            for k, ids in group:
                args += [k.dedup_prefix, len(ids)]
                for i in ids:
                    args += i.args()
            calls.append(([k.dedup_meta for k, _ in group], args))
        return calls

    def by_shard(self, events: Iterable[tuple[int, str, str]]) -> dict[int, list[DedupId]]:
        """The dedup ids of (project, event id, fingerprint)s by key shard: a caller that sets several states
        of the same events (the batch writer: running, then succeeded) hashes each id once."""
        out: dict[int, list[DedupId]] = {}
        for p, e, fp in events:
            out.setdefault(self.keys.shard_of(fp), []).append(dedup_id(p, e))
        return out

    async def set(self, events: Iterable[tuple[int, str, str]] | dict[int, list[DedupId]], code: int) -> int:
        """Set the state of (project, event id, fingerprint)s, or of ids from by_shard(): one script call on
        one server, one per key shard (concurrently) on a cluster."""
        by_shard = events if isinstance(events, dict) else self.by_shard(events)
        if not by_shard:
            return 0
        calls = await self._calls("set", code, list(by_shard.items()))
        return sum(int(n) for n in await asyncio.gather(*(self.script(keys=k, args=a) for k, a in calls)))

    async def get(self, events: list[tuple[int, str]]) -> list[int | None]:
        """State code per (project, event id), None when not remembered. The fingerprint is not known
        here (GET /jobs/{id} has the id only): every key shard is asked (one call on one server)."""
        if not events:
            return []
        ids = [dedup_id(p, e) for p, e in events]
        # every shard's layout (on one server: the shared one, and the old ones while they may hold ids)
        calls = await self._calls("get", 0, [(i, ids) for i in range(self.keys.shards)], shared_ids=ids)
        replies = await asyncio.gather(*(self.script(keys=k, args=a) for k, a in calls))
        found: list[int | None] = [None] * len(ids)
        for raw in replies:  # one value per event and shard, shard after shard
            for n, v in enumerate(raw):
                if v is not None and found[n % len(ids)] is None:
                    found[n % len(ids)] = int(v) % 8
        return found
