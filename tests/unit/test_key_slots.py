"""Every Lua script call's keys share one Redis Cluster slot, whatever the fingerprint, client, project or
batch (the cluster client refuses a call otherwise); shards spread evenly over slots. No server needed:
redis-py's own key_slot is the cluster's CRC16."""

from __future__ import annotations

import random
import string
from collections import Counter

import pytest
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from core.keys import Keys, shard_tags

N = 10_000


def _one_slot(names: list[str]) -> int:
    slots = {key_slot(n.encode()) for n in names}
    assert len(slots) == 1, (names, slots)
    return slots.pop()


def _fingerprint(rng: random.Random) -> str:
    if rng.random() < 0.8:  # computed ones are 64 hex digits; client-given ones anything
        return f"{rng.getrandbits(256):064x}"
    return "".join(rng.choices(string.printable, k=rng.randint(1, 80)))


@pytest.mark.parametrize(("shards", "n"), [(1, 1000), (3, 1000), (16, N), (64, 1000)])
def test_every_script_call_is_single_slot(shards: int, n: int) -> None:
    rng = random.Random(shards)
    keys = Keys("fl", shards)
    used: Counter[int] = Counter()
    for _ in range(n):
        fp = _fingerprint(rng)
        k = keys.for_fingerprint(fp)
        pid, bid = rng.randint(1, 10**9), f"{rng.getrandbits(128):032x}"
        bucket, dd_shard = rng.randint(0, 10**8), rng.randint(0, 65535)
        # ingest.lua: its KEYS, and the names it builds from ARGV (dedup buckets, per-project logs/indexes)
        slot = _one_slot([*k.ingest_keys(), f"{k.dedup_prefix}g{bucket}:{dd_shard}", k.new_groups(pid),
                          k.feed_index(pid), k.new_groups("") + str(pid), k.feed_index("") + str(pid)])
        used[slot] += 1
        _one_slot([k.dedup_meta, f"{k.dedup_prefix}g{bucket}:{dd_shard}"])  # dedup_state.lua
        _one_slot([k.pending_counts, k.flushing_batches, k.flushing(bid), k.sync_generation,  # flush_start
                   k.flushing_batches + ":" + bid])  # counts_snapshot.lua builds batch names so
        _one_slot([k.feed_dirty, k.live_counts, k.feed_emitted, k.feed_last_seen])  # feed_take.lua
        _one_slot([k.live_counts, k.feed_emitted, k.feed_last_seen, k.feed_groups, k.feed_dirty,  # live_prune
                   k.live_new, k.feed_index(pid), k.pending_counts])  # + live_rebase.lua
        _one_slot([k.retries, k.stream])  # retry_pump.lua, retry_schedule.lua
        # low-traffic alerting keys stay on the global tag, beside the global stream that carries deliveries:
        # alert_enqueue.lua (cooldown keys of any group + the stream), signal_once.lua, the feed's
        # minute counters (core/alerts/signals.py builds "<prefix><project>:<minute>")
        root = keys.root
        _one_slot([root.stream, root.alert_cooldown(rng.randint(1, 999), fp)])
        _one_slot([root.group_signals, root.signal_sent(fp, rng.randint(0, 2**41))])
        _one_slot([root.group_signals, root.alert_windows, f"{root.alert_minutes_prefix}{pid}:{bucket}"])
        client = rng.choice(("ip:", "key:", "")) + f"{rng.getrandbits(rng.randint(1, 200)):x}"
        windows = [keys.ratelimit(t, client) for t in ("short@GET/errors", "long", "burst", "x" * 30)]
        _one_slot(windows)
        if shards == 1:  # the limiter folded into ingest.lua (api/ratelimit.py): its windows ride in that call
            _one_slot([*k.ingest_keys(), *windows])
    assert len(used) == shards  # every shard got fingerprints...
    if n == N and shards > 1:  # ...each within 25 % of an even share
        assert all(abs(c - n / shards) <= 0.25 * n / shards for c in used.values()), used


def test_limiter_keys_spread_over_slots_when_sharded() -> None:
    keys = Keys("fl", 16)
    slots = {key_slot(keys.ratelimit("long", f"ip:10.0.{i // 256}.{i % 256}").encode()) for i in range(1000)}
    assert len(slots) > 900  # a slot per client, not one slot for every client


@pytest.mark.parametrize("shards", [2, 3, 6, 16, 100, 256])
def test_shard_tags_are_evenly_spaced_over_slots(shards: int) -> None:
    width = REDIS_CLUSTER_HASH_SLOTS / shards
    keys = Keys("tenant-a", shards)
    for i, k in enumerate(keys.all_shards):
        slot = key_slot(k.stream.encode())
        assert int(i * width) <= slot < int((i + 1) * width)
    # three primaries (redis-cli --cluster create: equal contiguous ranges) get 16 shards as 6/5/5
    if shards == 16:
        per_node = Counter(key_slot(k.stream.encode()) * 3 // REDIS_CLUSTER_HASH_SLOTS for k in keys.all_shards)
        assert sorted(per_node.values()) == [5, 5, 6]
    assert shard_tags("tenant-a", shards) == shard_tags("tenant-a", shards)  # every process agrees


def test_one_shard_keeps_the_single_redis_names() -> None:
    keys = Keys("fl", 1)
    assert keys.all_shards == (keys,)
    assert keys.for_fingerprint("a" * 64) == keys
    assert (keys.stream, keys.pending_counts, keys.dedup_prefix, keys.projects) == (
        "{fl}:tasks", "{fl}:counts:pending", "{fl}:dd:", "{fl}:projects")
    assert keys.ratelimit("long", "ip:1.2.3.4") == "{fl}:rl:long:ip:1.2.3.4"


def test_global_keys_stay_on_the_global_tag() -> None:
    keys = Keys("fl", 16)
    assert {keys.projects, keys.dead_letters, keys.sync_lock(7), keys.heartbeat("worker", "w1")} == {
        "{fl}:projects", "{fl}:dead", "{fl}:lock:sync:7", "{fl}:hb:worker:w1"}
    assert len({k.stream for k in keys.all_shards}) == 16
    assert keys.shard(5).root == keys


def test_by_shard_groups_fingerprints_with_their_shards_keys() -> None:
    """Callers that touch several groups' live/feed state (triage, retention) call once per shard."""
    keys = Keys("fl", 16)
    fps = [f"{i:064x}" for i in range(200)]
    groups = keys.by_shard(fps)
    assert sorted(fp for _, part in groups for fp in part) == sorted(fps)
    for k, part in groups:
        assert all(keys.for_fingerprint(fp) == k for fp in part)
    assert Keys("fl", 1).by_shard(fps) == [(Keys("fl", 1), fps)]
