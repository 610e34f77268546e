"""The whole stack on a local Redis Cluster (3 primaries + 3 replicas) with 16 key shards: exact counts,
duplicates counted once, the queue drains, the load spreads over the primaries; a planned CLUSTER
FAILOVER under steady load loses nothing and answers no 5xx."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from core.db.engine import make_engine
from core.db.models import ErrorGroup
from core.fingerprint import client_fingerprint
from core.keys import Keys
from core.queue import queue_figures
from core.redis import make_redis
from faultline.redis_topology import LocalRedisCluster, _client
from faultline.stack import Stack
from tests.conftest import logged_stack
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e
SHARDS = 16


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with logged_stack(tmp_path_factory.mktemp("cluster"), "e2e_redis_cluster", db="sqlite", nodes=2,
                      redis="cluster", redis_password="cluster-test-pw",
                      env={"FAULTLINE_SYNC_INTERVAL": "1", "FAULTLINE_REDELIVER_AFTER": "3",
                           "FAULTLINE_REDIS_SHARDS": str(SHARDS), "FAULTLINE_RATE_LIMIT_ENABLED": "false"}) as st:
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


async def _db_counts(stack: Stack, fps: list[str]) -> dict[str, int]:
    engine = make_engine(stack.settings())
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(ErrorGroup.fingerprint, ErrorGroup.count)
                                      .where(ErrorGroup.fingerprint.in_(fps)))
            return {r[0]: int(r[1]) for r in rows}
    finally:
        await engine.dispose()


async def test_counts_exact_duplicates_free_queue_drained_load_even(stack: Stack) -> None:
    rng = random.Random(12)
    tag = uuid.uuid4().hex[:8]
    names = [f"cluster-{tag}-{i}" for i in range(200)]
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
        return await _db_counts(stack, list(expected)) == dict(expected)
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


async def test_planned_cluster_failover_loses_nothing(stack: Stack) -> None:
    """Steady load (~100 events/s, about 8 s) while one primary is failed over to its replica with
    CLUSTER FAILOVER: every answer is 202 and every accepted event reaches the DB, exactly."""
    cluster = stack.redis_set
    assert isinstance(cluster, LocalRedisCluster)
    tag = uuid.uuid4().hex[:8]
    names = [f"failover-{tag}-{i}" for i in range(40)]
    sent: list[str] = []
    codes: Counter[int] = Counter()
    stop = asyncio.Event()

    async def load(session: aiohttp.ClientSession) -> None:
        i = 0
        while not stop.is_set():
            batch = [{"message": f"fo {i + j}", "fingerprint": names[(i + j) % len(names)],
                      "event_id": uuid.uuid4().hex} for j in range(10)]
            i += 10
            code, _ = await _send(session, stack, batch)
            codes[code] += 1
            if code == 202:
                sent.extend(e["fingerprint"] for e in batch)
            await asyncio.sleep(0.1)

    primary = cluster.primary_ports()[0]
    replica = cluster.topology()[primary][0]
    async with aiohttp.ClientSession() as s:
        runner = asyncio.create_task(load(s))
        await asyncio.sleep(2)
        with _client(replica, "cluster-test-pw") as c:
            assert c.execute_command("CLUSTER", "FAILOVER") in (b"OK", "OK", True)

        async def promoted() -> bool:
            return replica in cluster.primary_ports()
        await wait_for(promoted, 20, "the replica promoted")
        await asyncio.sleep(4)
        stop.set()
        await runner
    assert set(codes) == {202}, codes
    expected = Counter(client_fingerprint(1, n) for n in sent)

    async def db_exact() -> bool:
        return await _db_counts(stack, list(expected)) == dict(expected)
    await wait_for(db_exact, 60, "DB counts equal to every accepted event")
    engine = make_engine(stack.settings())
    try:
        async with engine.connect() as conn:
            total = (await conn.execute(select(func.sum(ErrorGroup.count))
                                        .where(ErrorGroup.fingerprint.in_(list(expected))))).scalar()
    finally:
        await engine.dispose()
    assert total == len(sent)
