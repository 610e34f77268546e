"""Every Redis key, stream and channel name Faultline uses, in one place.

Keys are split into `shards` logical shards chosen from the fingerprint (`shard_of`), each with its own hash
tag, so a Redis Cluster spreads the ingest load over its primaries while every script call stays in one slot:
per shard live the task stream and its group, pending/live counts, feed state, retries, quota shares and the
dedup hashes of the events whose fingerprint falls in it. Low-traffic keys (projects, dead letters, locks,
heartbeats, limiter windows) keep the global `{prefix}` tag. With one shard, shard 0 IS the global tag: the
key names are exactly those of a single-Redis stack.

Build one `Keys` per process (`Keys.from_settings`) and pass it: the shard tags are computed once.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cache, cached_property
from typing import TYPE_CHECKING

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

if TYPE_CHECKING:
    from core.settings import Settings


@cache
def shard_tags(prefix: str, shards: int) -> tuple[str, ...]:
    """One tag suffix per shard whose slot lies near the middle of the shard's equal slice of the 16,384
    slots (within 1/8 of a slice).

    `redis-cli --cluster create` (and managed clusters) give each primary a contiguous, equal range of slots,
    so slots spaced evenly put an equal number of shards (+-1) on every primary; a plain hash would cluster
    by chance. Deterministic: every process of a stack finds the same tags. Expected tries per shard:
    4 x `shards` (CRC16 is fast: 256 shards take milliseconds)."""
    if shards == 1:
        return ("",)
    width = REDIS_CLUSTER_HASH_SLOTS / shards
    tags = []
    for i in range(shards):
        middle, near = (i + 0.5) * width, max(0.5, width / 8)
        n = 0
        while abs(key_slot(f"{prefix}:{i}.{n}".encode()) + 0.5 - middle) > near:
            n += 1
        tags.append(f"{i}.{n}")
    return tuple(tags)


@dataclass(frozen=True)
class Keys:
    prefix: str = "fl"
    shards: int = 1
    shard_tag: str = ""  # "" = the global tag {prefix}

    @classmethod
    def from_settings(cls, settings: Settings) -> Keys:
        return cls(settings.key_prefix, settings.key_shards)

    @property
    def tag(self) -> str:
        return "{" + self.prefix + (":" + self.shard_tag if self.shard_tag else "") + "}"

    # --- shards ---
    @cached_property
    def all_shards(self) -> tuple[Keys, ...]:
        """The keys of every shard, in shard order (with one shard: this very object's names)."""
        if self.shards == 1:
            return (replace(self, shard_tag=""),)
        return tuple(replace(self, shard_tag=t) for t in shard_tags(self.prefix, self.shards))

    @cached_property
    def streams(self) -> tuple[Keys, ...]:
        """The shards whose task streams workers read: every shard, plus the global-tag stream when sharded
        (tasks not tied to a group, e.g. alert deliveries, are enqueued beside their global keys)."""
        return self.all_shards if self.shards == 1 else (*self.all_shards, self.root)

    def shard(self, index: int) -> Keys:
        return self.all_shards[index]

    def shard_of(self, fingerprint: str) -> int:
        """The shard of a group: CRC32 of its fingerprint (every process agrees, any fingerprint spelling)."""
        return zlib.crc32(fingerprint.encode()) % self.shards if self.shards > 1 else 0

    def for_fingerprint(self, fingerprint: str) -> Keys:
        return self.all_shards[self.shard_of(fingerprint)]

    def by_shard(self, fingerprints: Iterable[str]) -> list[tuple[Keys, list[str]]]:
        """The fingerprints grouped by their shard, with that shard's keys: one single-slot call per group
        (a group's live/feed state lives in its shard, never on the global tag when sharded)."""
        groups: dict[int, list[str]] = {}
        for fp in fingerprints:
            groups.setdefault(self.shard_of(fp), []).append(fp)
        return [(self.all_shards[i], fps) for i, fps in sorted(groups.items())]

    @property
    def is_global(self) -> bool:
        return not self.shard_tag

    @property
    def root(self) -> Keys:
        """The global-tag keys (projects, dead letters, locks...) of the same stack."""
        return replace(self, shard_tag="") if self.shard_tag else self

    # task stream read by the workers through the consumer group below
    @property
    def stream(self) -> str:
        return f"{self.tag}:tasks"

    consumer_group: str = "workers"

    def ingest_keys(self, shared: Keys | None = None) -> list[str]:
        """KEYS of core/scripts/ingest.lua, in its order (one shard: one slot); `shared` = the keys whose dedup
        layout and quota keys this shard uses when not its own (one server: the global tag's,
        core/deduphome.py)."""
        home = shared or self
        return [self.stream, self.pending_counts, self.live_counts, self.feed_dirty, self.feed_groups,
                home.dedup_meta, self.live_new, home.quota_conf, home.quota_state, home.dropped]

    # --- dedup + job state of events (core/dedup.py, ingest.lua, dedup_state.lua) ---
    # time-bucketed, sharded hashes "<prefix><bucket>:<shard>" of 6-byte digests of (project, event id)
    @property
    def dedup_prefix(self) -> str:
        return f"{self.tag}:dd:"

    # bucket -> shard count ("s:<bucket>") and events counted ("n:<bucket>")
    @property
    def dedup_meta(self) -> str:
        return f"{self.tag}:dd:meta"

    # details (attempts, last error) of an event whose task failed: rare, so one small key each, with a TTL
    def event_detail(self, project_id: int, event_id: str) -> str:
        return f"{self.tag}:evd:{project_id}:{event_id}"

    # fingerprint -> delta not yet in the DB; renamed to flushing(batch) by the sync job
    @property
    def pending_counts(self) -> str:
        return f"{self.tag}:counts:pending"

    def flushing(self, batch_id: str) -> str:
        return f"{self.tag}:counts:flushing:{batch_id}"

    @property
    def flushing_batches(self) -> str:
        return f"{self.tag}:counts:flushing"

    # incremented by every rename of the pending hash (flush_start.lua); read by core/counts.py
    @property
    def sync_generation(self) -> str:
        return f"{self.tag}:counts:generation"

    # fingerprint -> running total seen by Redis (fast view for the live feed; the DB holds the truth)
    @property
    def live_counts(self) -> str:
        return f"{self.tag}:counts:live"

    # fingerprints that (re)entered the live hash: the scheduler sets their live total from the DB's
    @property
    def live_new(self) -> str:
        return f"{self.tag}:counts:new"

    # HSCAN cursor of the idle-group pruner over the live hash (workers/prune.py)
    @property
    def prune_cursor(self) -> str:
        return f"{self.tag}:counts:prune-cursor"

    # ingest key -> project id
    @property
    def projects(self) -> str:
        return f"{self.tag}:projects"

    # delayed retries: sorted set scored by due time (ms), member = taskiq message
    @property
    def retries(self) -> str:
        return f"{self.tag}:retries"

    @property
    def dead_letters(self) -> str:
        return f"{self.tag}:dead"

    def job(self, task_id: str) -> str:
        return f"{self.tag}:job:{task_id}"

    def sync_lock(self, bucket: int) -> str:
        return f"{self.tag}:lock:sync:{bucket}"

    @property
    def sync_runs(self) -> str:
        """bucket -> how many replicas ran that interval's sync (the lock makes it 1)"""
        return f"{self.tag}:sync:runs"

    def heartbeat(self, role: str, name: str) -> str:
        return f"{self.tag}:hb:{role}:{name}"

    def heartbeat_pattern(self, role: str) -> str:
        return f"{self.tag}:hb:{role}:*"

    def ratelimit(self, tier: str, client: str) -> str:
        """One client's window of one tier. Sharded stacks tag each client apart (every tier of one client
        in one slot: the limiter's one call per request stays single-slot), so limiter traffic spreads over
        a cluster instead of loading the global slot."""
        if self.shards > 1:
            return "{" + f"{self.prefix}:rl:{client}" + "}" + f":{tier}"
        return f"{self.tag}:rl:{tier}:{client}"

    @property
    def socketio_channel(self) -> str:
        return f"{self.prefix}-socketio"

    # --- live feed (core/feed.py) ---
    # fingerprints counted since the coalescer's last take (SADD by ingest.lua, SPOP by feed_take.lua)
    @property
    def feed_dirty(self) -> str:
        return f"{self.tag}:feed:dirty"

    # fingerprint -> small JSON group summary, written once on first sighting (HSETNX by ingest.lua)
    @property
    def feed_groups(self) -> str:
        return f"{self.tag}:feed:groups"

    # fingerprint -> live total last emitted to clients: deltas are computed against it, atomically
    @property
    def feed_emitted(self) -> str:
        return f"{self.tag}:feed:emitted"

    # fingerprint -> Redis time (s) of the take that last saw it change
    @property
    def feed_last_seen(self) -> str:
        return f"{self.tag}:feed:last"

    # lease of the one coalescer allowed to emit (SET NX PX, renewed by its holder)
    @property
    def feed_lock(self) -> str:
        return f"{self.tag}:feed:lock"

    # --- triage signals: a capped stream of group transitions (new_group, regression, spike, threshold) ---
    # written by core/triage.py (regressions) and core/alerts/signals.py, read by workers/alerts.py
    @property
    def group_signals(self) -> str:
        return f"{self.tag}:signals:groups"

    # set once per signalled transition (group, transition time ms), so a re-sent signal is added once
    def signal_sent(self, fingerprint: str, at_ms: int) -> str:
        return f"{self.tag}:signals:sent:{fingerprint}:{at_ms}"

    # --- per-project limits (core/ratelimit/quota.py, ingest.lua) ---
    # project id -> "per_second|per_minute|new_groups_per_hour" overrides (empty = the setting's default);
    # mirrored from the DB table project_quotas
    @property
    def quota_conf(self) -> str:
        return f"{self.tag}:quota:conf"

    # "<project id>:s" / "<project id>:m" -> GCRA theoretical arrival time (Redis time, µs)
    @property
    def quota_state(self) -> str:
        return f"{self.tag}:quota:tat"

    # "<project id>:rate_limited" / "<project id>:overflow" -> events dropped / counted into the overflow group
    @property
    def dropped(self) -> str:
        return f"{self.tag}:quota:dropped"

    # sorted set per project: fingerprints of the groups created in the last hour (score = Redis time µs)
    def new_groups(self, project_id: int | str) -> str:
        return f"{self.tag}:groups:new:{project_id}"

    # set per project: its fingerprints that have a feed summary, so `subscribe` reads only its own groups
    def feed_index(self, project_id: int | str) -> str:
        return f"{self.tag}:feed:idx:{project_id}"

    # set once the per-project feed indexes hold every summary written before they existed (an upgrade)
    @property
    def feed_index_built(self) -> str:
        return f"{self.tag}:feed:idx:built"

    # --- alerts (core/alerts/, workers/alerts.py) ---
    # the triage signals (group_signals, above) are read by the alert evaluator through this consumer group
    alert_consumer_group: str = "alerts"

    # (rule, group) -> set while the rule is cooling down for that group (SET NX PX by alert_enqueue.lua)
    def alert_cooldown(self, rule_id: int | str, fingerprint: str) -> str:
        return f"{self.tag}:alerts:cool:{rule_id}:{fingerprint}"

    # project id -> the longest window (minutes) of its threshold rules: only these projects are counted
    @property
    def alert_windows(self) -> str:
        return f"{self.tag}:alerts:windows"

    # events per group in one minute of one project: "<prefix><project id>:<minute>" (HINCRBY by the feed)
    @property
    def alert_minutes_prefix(self) -> str:
        return f"{self.tag}:alerts:m:"

    # a delivery that reached its receiver (a redelivered task does not send it again)
    def alert_sent(self, delivery_id: str) -> str:
        return f"{self.tag}:alerts:sent:{delivery_id}"

    # one threshold scan / retention run per interval across replicas (SET NX PX)
    def alert_scan_lock(self, bucket: int) -> str:
        return f"{self.tag}:lock:alert-scan:{bucket}"

    def retention_lock(self, bucket: int) -> str:
        return f"{self.tag}:lock:retention:{bucket}"

    def sample_cap_lock(self, bucket: int) -> str:
        return f"{self.tag}:lock:sample-cap:{bucket}"

    # time (s) up to which the per-group sample cap has looked at new samples (workers/retention.py)
    @property
    def retention_cap_since(self) -> str:
        return f"{self.tag}:retention:cap-since"
