"""The whole stack on a local Redis Cluster (3 primaries + 3 replicas) with 16 key shards: exact counts,
duplicates counted once, the queue drains, the load spreads over the primaries (must-show 2); under
100 events/s for 20 s, a planned CLUSTER FAILOVER loses nothing and answers no 5xx, and a SIGKILLed primary
loses nothing, answers 5xx only in its first seconds, and the workers, the backlog and the live feed
recover (must-show 3)."""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
import uuid
from collections import Counter
from typing import Any

import aiohttp
import pytest
from redis.crc import key_slot
from sqlalchemy import update

from core.db.engine import make_engine
from core.db.models import ErrorGroup
from core.fingerprint import client_fingerprint
from core.keys import Keys
from core.queue import queue_figures
from core.redis import make_redis
from faultline.redis_topology import LocalRedisCluster, _client, _wait, kill
from faultline.stack import Stack
from tests.conftest import logged_stack
from tests.e2e.failover_load import FailoverLoad, db_counts, settled_counts
from tests.e2e.test_feed import FeedClient
from tests.waiting import wait_for
from workers.retention import drop_groups

pytestmark = pytest.mark.e2e
SHARDS = 16


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with logged_stack(tmp_path_factory.mktemp("cluster"), "e2e_redis_cluster", db="sqlite", nodes=2,
                      redis="cluster", redis_password="cluster-test-pw",
                      env={"FAULTLINE_SYNC_INTERVAL": "1", "FAULTLINE_REDELIVER_AFTER": "3",
                           "FAULTLINE_REDIS_SHARDS": str(SHARDS), "FAULTLINE_RATE_LIMIT_ENABLED": "false",
                           "FAULTLINE_SAMPLES_PER_GROUP": "1000000"}) as st:
        yield st


async def _send(session: aiohttp.ClientSession, stack: Stack, events: list[dict[str, Any]]) -> tuple[int, Any]:
    async with session.post(f"{stack.url}/errors/batch", json={"events": events},
                            headers={"X-Faultline-Key": stack.ingest_key}) as r:
        return r.status, await r.json(content_type=None)


async def _deliver(session: aiohttp.ClientSession, stack: Stack, events: list[dict[str, Any]],
                   unavailable: Counter[int]) -> Any:
    """As an SDK does: a 503 ("not counted") is sent again, same event ids, until accepted."""
    for _ in range(50):
        code, body = await _send(session, stack, events)
        if code == 202:
            return body
        assert code == 503, (code, body)
        unavailable[code] += 1
        await asyncio.sleep(0.2)
    raise AssertionError("still refused after 50 tries")



async def test_counts_exact_duplicates_free_queue_drained_load_even(stack: Stack) -> None:
    # Fixed names and seed: the same 200 fingerprints every run, so the load-spread check below is about the
    # shard and slot placement (6/5/5 shards on 3 primaries), not about which random names a run drew
    # (random names put a primary 10-30 % off even now and then: the check failed 1 run in 9).
    rng = random.Random(12)
    names = [f"cluster-spread-{i}" for i in range(200)]
    events: list[dict[str, Any]] = []
    for i in range(4_500):
        events.append({"message": f"boom {i}", "fingerprint": rng.choice(names), "event_id": uuid.uuid4().hex})
    events += [dict(e) for e in rng.sample(events, 500)]  # 10 % resent with their ids
    rng.shuffle(events)
    unavailable: Counter[int] = Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20)) as s:
        replies = await asyncio.gather(*(_deliver(s, stack, events[i:i + 50], unavailable)
                                         for i in range(0, len(events), 50)))
    results = [r for body in replies for r in body["results"]]
    # a resent id is a duplicate; so is an event whose 503'd request had counted it in another shard
    assert sum(1 for r in results if r.get("duplicate")) >= 500
    print(f"503 answers (resent): {sum(unavailable.values())}")

    pid = 1  # the stack's default project
    unique = {e["event_id"]: e["fingerprint"] for e in events}
    expected = Counter(client_fingerprint(pid, name) for name in unique.values())
    assert sum(expected.values()) == 4_500

    async def db_exact() -> bool:
        return await db_counts(stack, list(expected)) == dict(expected)
    await wait_for(db_exact, 90, "DB counts equal to the unique events")

    settings = stack.settings()
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    try:
        async def drained() -> bool:
            q = await queue_figures(redis, keys)
            return q.waiting == 0 and q.pending == 0 and q.retrying == 0
        await wait_for(drained, 60, "every shard's stream drained and acked")
        assert (await queue_figures(redis, keys)).dead == 0

        # load per primary: the events each one counted (its shards' live totals), against an even share
        cluster = stack.redis_set
        assert isinstance(cluster, LocalRedisCluster)
        per_node: Counter[str] = Counter()
        for shard in keys.all_shards:
            live = await redis.hgetall(shard.live_counts)  # type: ignore[misc]
            node = redis.get_node_from_key(shard.live_counts)  # type: ignore[attr-defined]
            per_node[node.name] += sum(int(v) for k, v in live.items() if k.decode() in expected)
        assert sum(per_node.values()) == 4_500 and len(per_node) == 3
        even = 4_500 / 3
        assert all(abs(n - even) <= 0.25 * even for n in per_node.values()), per_node
    finally:
        await redis.aclose()




PASSWORD = "cluster-test-pw"
LOAD_SECONDS, FAULT_AT = 20, 5  # the 20 s of load at 100 events/s; the fault 5 s in


async def test_planned_cluster_failover_under_load_loses_nothing_and_answers_no_5xx(stack: Stack) -> None:
    cluster = stack.redis_set
    assert isinstance(cluster, LocalRedisCluster)
    load = FailoverLoad(stack.url, stack.ingest_key)
    primary = cluster.primary_ports()[0]
    replica = cluster.topology()[primary][0]
    marks: dict[str, float] = {}

    async def fail_over() -> None:
        await asyncio.sleep(FAULT_AT)
        marks["fault"] = time.monotonic()
        with _client(replica, PASSWORD) as c:
            assert c.execute_command("CLUSTER", "FAILOVER") in (b"OK", "OK", True)

        async def promoted() -> bool:
            return replica in cluster.primary_ports()
        await wait_for(promoted, 15, "the replica promoted")

    await asyncio.gather(load.run_for(LOAD_SECONDS), fail_over())
    print(load.summary(marks["fault"]))
    assert not load.errors(), load.summary(marks["fault"])
    assert len(load.accepted) >= 0.8 * 100 * LOAD_SECONDS  # the load did run at ~100 events/s
    await settled_counts(stack, load)


def _owner(cluster: LocalRedisCluster, slot: int) -> int:
    """The port of the primary serving `slot` now."""
    for n in cluster.nodes:
        if not n.alive():
            continue
        with _client(n.port, PASSWORD) as c:
            for start, end, primary, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(primary[1])
    raise AssertionError(f"no node serves slot {slot}")


async def _pre_fault_backlog(redis: Any, keys: Keys, fault_ms: int) -> int:
    """Tasks queued before the fault and not yet acknowledged, over every shard: still pending (delivered,
    not acked) or not yet delivered. Stream ids are Redis-clock ms (one machine: the test's clock)."""
    left = 0
    for shard in keys.streams:
        pending = await redis.xpending_range(shard.stream, shard.consumer_group, min="-", max=str(fault_ms), count=100)
        left += len(pending)
        groups = await redis.xinfo_groups(shard.stream)
        last = next(g["last-delivered-id"] for g in groups if g["name"] == shard.consumer_group.encode())
        if int(last.split(b"-")[0]) < fault_ms:
            left += len(await redis.xrange(shard.stream, min=b"(" + last, max=str(fault_ms), count=100))
    return left


def _jobs_done(stack: Stack) -> dict[str, float]:
    """Each worker's count of tasks finished (its own /metrics: faultline_jobs_total{outcome="succeeded"})."""
    out = {}
    for w in stack.workers:
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_ports[w.name]}/metrics", timeout=5) as r:
            text = r.read().decode()
        out[w.name] = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                          if line.startswith('faultline_jobs_total{outcome="succeeded"}'))
    return out


async def test_killed_primary_loses_nothing_and_everything_recovers(stack: Stack) -> None:
    """SIGKILL of the primary holding the global slot (projects, locks, the feed lease) and its shards."""
    cluster = stack.redis_set
    assert isinstance(cluster, LocalRedisCluster)
    settings = stack.settings()
    keys = Keys.from_settings(settings)
    victim = _owner(cluster, key_slot(keys.root.stream.encode()))
    victim_shards = {i for i, k in enumerate(keys.all_shards) if _owner(cluster, key_slot(k.stream.encode())) == victim}
    assert victim_shards, "the killed primary serves some shards"
    load = FailoverLoad(stack.url, stack.ingest_key)
    feed = await FeedClient(stack.url, stack.admin_token).connect()
    marks: dict[str, float] = {}
    marks_jobs: dict[str, float] = {}
    redis = make_redis(settings, timeout=2)

    async def fault() -> None:
        await asyncio.sleep(FAULT_AT)
        fault_ms = int(time.time() * 1000)
        marks["fault"] = time.monotonic()
        kill(cluster.node(victim))

        async def jobs_later() -> None:
            await asyncio.sleep(6)
            marks_jobs.update(await asyncio.to_thread(_jobs_done, stack))
        later = asyncio.create_task(jobs_later())
        # every task queued before the kill acked: polled (a failed poll = the shard not served yet)
        while True:
            try:
                if await _pre_fault_backlog(redis, keys, fault_ms) == 0:
                    marks["drained"] = time.monotonic()
                    await later
                    return
            except Exception:  # the dead node's slots until the replica takes over
                pass
            if time.monotonic() - marks["fault"] > 60:
                await later
                return
            await asyncio.sleep(0.25)

    try:
        await asyncio.gather(load.run_for(LOAD_SECONDS), fault())
        fault_at = marks["fault"]
        print(load.summary(fault_at))
        expected = await settled_counts(stack, load)  # lost 0

        # 5xx only in the first 4 s (by the time each failed request was SENT, from the kill; its answer
        # comes up to the ingest budget later): the bound as it states it
        late = [a for a in load.errors() if a.sent - fault_at > 4.0]
        assert not late, load.summary(fault_at)
        # backlog drained within redeliver_after (3 s here) + 5 s of the kill
        assert "drained" in marks, "tasks queued before the kill still unacked after 60 s"
        drained = marks["drained"] - fault_at
        print(f"pre-kill backlog acked {drained:.1f}s after the kill")
        assert drained <= settings.redeliver_after + 5

        # every worker still consuming: each one's count of finished tasks grew between 6 s after the kill (the
        # failover done) and the end of the load
        after = await asyncio.to_thread(_jobs_done, stack)
        assert all(after[w] > marks_jobs[w] for w in after), (marks_jobs, after)

        # the live feed: back within 10 s (a group of a killed shard moving again), totals = the DB's
        fps = {fp for fp in expected if keys.shard_of(fp) in victim_shards}
        assert fps
        before = {fp: max([c["total"] for t, n, d in feed.events if n == "error:count" and t <= fault_at + 0.5
                           for c in d["counts"] if c["fingerprint"] == fp], default=0) for fp in fps}
        back = [t for t, n, d in feed.events if n == "error:count" and t > fault_at + 0.5
                and any(c["fingerprint"] in fps and c["total"] > before[c["fingerprint"]] for c in d["counts"])]
        assert back, "no count of a failed-over shard's group reached the feed"
        print(f"live feed back {back[0] - fault_at:.1f}s after the kill")
        assert back[0] - fault_at <= 10

        async def feed_equals_db() -> bool:
            return {fp: feed.view.get(fp, 0) for fp in expected} == dict(expected)
        await wait_for(feed_equals_db, 15, "the feed's totals equal to the DB's")
    finally:
        await feed.sio.disconnect()
        await redis.aclose()
        cluster.node(victim).start()  # back as a replica: the cluster whole again for what follows
        _wait(cluster._formed, "the cluster whole again", timeout=60)


async def test_triage_and_retention_follow_each_groups_shard(stack: Stack) -> None:
    """Groups spread over the 16 shards: the state change reaches the feed (error:state over the cluster's
    pub/sub), "ignored until 4 more events" reopens on the live total of the group's own shard (the worker
    reads it before the sync has moved the DB count), and retention's drop of idle groups clears each
    group's live/feed state in its own shard."""
    settings = stack.settings()
    keys = Keys.from_settings(settings)
    tag = uuid.uuid4().hex[:8]
    names = [f"triage-{tag}-{i}" for i in range(12)]
    fps = [client_fingerprint(1, n) for n in names]
    assert len({keys.shard_of(fp) for fp in fps}) >= 6  # several shards, on every primary
    admin = {"Authorization": f"Bearer {stack.admin_token}"}
    async with aiohttp.ClientSession() as s:
        await _deliver(s, stack, [{"message": "t", "fingerprint": n} for n in names for _ in range(3)], Counter())

        async def counted(n: int) -> bool:
            return await db_counts(stack, fps) == {fp: n for fp in fps}
        await wait_for(lambda: counted(3), 30, "3 events per group in the DB")
        feed = await FeedClient(stack.url, stack.admin_token).connect()
        told: dict[str, str] = {}

        async def on_state(data: dict[str, Any]) -> None:
            told.update((g["fingerprint"], g["state"]) for g in data["groups"])
        feed.sio.on("error:state", on_state)
        try:
            for fp in fps:
                async with s.patch(f"{stack.url}/errors/{fp}", headers=admin,
                                   json={"state": "ignored", "ignore_until_count": 4}) as r:
                    assert r.status == 200, await r.text()

            async def dashboards_told() -> bool:  # error:state crosses nodes by the cluster's sharded pub/sub
                return all(told.get(fp) == "ignored" for fp in fps)
            await wait_for(dashboards_told, 10, "error:state 'ignored' of every group on the feed")
        finally:
            await feed.sio.disconnect()
        # the 4 more events in one request: the worker sees them before any sync moves the DB count
        await _deliver(s, stack, [{"message": "t", "fingerprint": n} for n in names for _ in range(4)], Counter())

        async def reopened() -> bool:
            states = []
            for fp in fps:
                async with s.get(f"{stack.url}/errors/{fp}", headers=admin) as r:
                    states.append((await r.json())["state"])
            return states == ["unresolved"] * len(fps)
        await wait_for(reopened, 30, "every group reopened on its 4th event after the ignore")
        await wait_for(lambda: counted(7), 30, "7 events per group in the DB")

    redis = make_redis(settings, timeout=5)
    engine = make_engine(settings)
    try:
        async def live_state() -> list[bool]:
            out = []
            for fp in fps:
                k = keys.for_fingerprint(fp)
                out.append(bool(await redis.hexists(k.live_counts, fp)) or bool(await redis.hexists(k.feed_groups, fp))
                           or bool(await redis.sismember(k.feed_index(1), fp)))  # type: ignore[misc]
            return out
        assert all(await live_state())  # in their shards now: the drop below has something to remove
        async with engine.begin() as conn:  # only these groups idle: retention's cutoff picks them alone
            await conn.execute(update(ErrorGroup).where(ErrorGroup.fingerprint.in_(fps)).values(last_seen=1.0))
        assert await drop_groups(engine, redis, keys, cutoff=2.0) == len(fps)
        assert await db_counts(stack, fps) == {}
        assert not any(await live_state()), "live/feed state left in the groups' shards"
    finally:
        await redis.aclose()
        await engine.dispose()
