"""Where the remembered event ids of each key shard live (core/dedup.py's layout), and the layout before.

On Redis Cluster each key shard keeps its own dedup hashes and meta hash: a script's keys must share a slot.
On one server (redis://, Sentinel) every shard's ids live in ONE layout, the global tag's (`Keys.root`): an
ingest call carrying a loop turn's events of 16 shards (a section each, mostly one event per section) then
opens one meta hash (one HMGET) and adds one id count (one HINCRBY) per call instead of one per section,
and the batch writer's two job-state calls read one meta instead of 16 (issue 12 must-show 6). It also
deduplicates an event id across shards: a resend whose fingerprint moved to another shard is still caught.
Project quotas follow the same rule (`shared`; core/ratelimit/quota.py): one state per project, exact.

Upgrade: a stack that ran several shards on one server before kept its ids in each shard's own layout. They
are still READ (never written) while any shard's meta hash exists: `Legacy.active()` checks that with one
EXISTS, once a minute per process (and assumes "yes" until its first check answered). A shard's meta
expires 3 windows after its last generation began (_dedup.lua), so every id it remembers has expired by
then; an old-version process still running keeps its shards' metas alive, so a rolling upgrade loses none.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from core.keys import Keys
from core.redis import is_cluster

RECHECK_S = 60.0  # an EXISTS of every shard's meta a minute per process: nothing against ingest's rate


def shared(redis: Redis, keys: Keys) -> bool:
    """True when every key shard keeps its ids in the global tag's layout (several shards, one server)."""
    return keys.shards > 1 and not is_cluster(redis)


def home(redis: Redis, keys: Keys, shard: int) -> Keys:
    """The keys whose dedup prefix and meta hold `shard`'s remembered ids."""
    return keys.root if shared(redis, keys) else keys.shard(shard)


Section = list[bytes | str | int]


def ingest_sections(redis: Redis, keys: Keys) -> tuple[list[list[bytes]], list[Section], list[Section]]:
    """Per shard, ingest.lua's section KEYS and its section head without / with the shard's own old dedup
    layout to read as well (core/scripts/ingest.lua's header: dedup prefix, new-groups prefix, feed index
    prefix, old dedup prefix, old dedup meta)."""
    homes = [home(redis, keys, i) for i in range(keys.shards)]
    script_keys = [[key.encode() for key in k.ingest_keys(h)] for k, h in zip(keys.all_shards, homes, strict=True)]
    heads: list[Section] = [[h.dedup_prefix.encode(), h.new_groups("").encode(), k.feed_index("").encode(), b"", b""]
                            for k, h in zip(keys.all_shards, homes, strict=True)]
    old: list[Section] = [[*head[:3], k.dedup_prefix.encode(), k.dedup_meta.encode()]
                          for k, head in zip(keys.all_shards, heads, strict=True)]
    return script_keys, heads, old


class Legacy:
    """Whether some shard's own dedup layout (before the shared one) may still hold ids in the window."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis, self.keys = redis, keys
        self.relevant = shared(redis, keys)
        self._active = self.relevant  # until the first check: assume the old layout still holds ids
        self._checked = float("-inf")

    @property
    def known(self) -> bool:
        """The last answer, without a round trip (the ingest hot path; `refresh` updates it)."""
        return self._active

    def due(self) -> bool:
        return self.relevant and time.monotonic() >= self._checked + RECHECK_S

    async def refresh(self) -> bool:
        """One EXISTS over every shard's meta (one server: a multi-key EXISTS is allowed). On an error the
        previous answer stays and the next call checks again."""
        self._checked = time.monotonic()
        found = await self.redis.exists(*(k.dedup_meta for k in self.keys.all_shards))
        self._active = int(found) > 0
        return self._active

    async def active(self) -> bool:
        if self.due():
            try:
                await self.refresh()
            except Exception:
                self._checked = float("-inf")
                raise
        return self._active
