"""Key shards on ONE Redis server: a loop turn's events of every shard ride in ONE ingest script call (a section
per shard, core/scripts/ingest.lua), counted exactly once in each shard's own hashes, enqueued as one task,
re-run after a lost reply without counting twice, shed whole when the queue is full, and stored once by a
worker although the task spans shards (issue 12 must-show 6). Real redis-server."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from core.counts import split_deltas
from core.dedup import QUEUED, SUCCEEDED, JobStates
from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings
from tests.integration.conftest import api_client, prepare
from tests.integration.test_ingest_ambiguity import SECTION_KEYS, LoseReplies, events_of
from tests.integration.test_worker import db_totals
from tests.waiting import wait_for
from workers.main import run_worker
from workers.scheduler import run_scheduler

SHARDS = 16


class Spy:
    """Wraps the ingest script: records each call's (sections, events)."""

    def __init__(self, script: Any) -> None:
        self.script, self.calls = script, []  # type: ignore[var-annotated]

    async def __call__(self, **kwargs: Any) -> Any:
        self.calls.append((len(kwargs["keys"]) // SECTION_KEYS, events_of(kwargs)))
        return await self.script(**kwargs)


def batch(n: int, tag: str, groups: int = 40) -> list[dict[str, Any]]:
    """n events over `groups` fingerprints (they fall in most of the 16 shards), with fixed event ids."""
    return [{"message": f"{tag} {i % groups}", "fingerprint": f"{tag}-fp-{i % groups}", "event_id": f"{tag}{i:031x}"}
            for i in range(n)]


async def counted(settings: Settings) -> tuple[dict[str, int], int, int]:
    """(live total per fingerprint over every shard, pending deltas summed, events in queued tasks), and
    checks each group is counted in its own shard only."""
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    try:
        live: dict[str, int] = {}
        pending = 0
        for i, k in enumerate(keys.all_shards):
            for fp, n in (await redis.hgetall(k.live_counts)).items():  # type: ignore[misc]
                assert keys.shard_of(fp.decode()) == i, f"{fp!r} counted in shard {i}"
                live[fp.decode()] = live.get(fp.decode(), 0) + int(n)
            pending += sum(split_deltas(await redis.hgetall(k.pending_counts))[0].values())  # type: ignore[misc]
        queued = 0
        for k in keys.streams:
            queued += sum(len(orjson.loads(f[b"data"])["kwargs"]["events"]) for _, f in await redis.xrange(k.stream))
        return live, pending, queued
    finally:
        await redis.aclose()


async def tasks(settings: Settings) -> int:
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    try:
        return sum([int(await redis.xlen(k.stream)) for k in keys.streams])
    finally:
        await redis.aclose()


async def test_one_call_per_loop_turn_counts_every_shard_exactly_once(make_settings: Any) -> None:
    settings = make_settings(redis_shards=SHARDS)
    await prepare(settings)
    async with api_client(settings) as c:
        ingestor = c._transport.app.state.ingestor  # type: ignore[attr-defined]
        spy = Spy(ingestor.script)
        ingestor.script = spy
        events = batch(200, "a")
        replies = await asyncio.gather(*(c.post("/errors/batch", json={"events": events[i:i + 20]})
                                         for i in range(0, 200, 20)))
        assert all(r.status_code == 202 and r.json()["accepted"] == 20 for r in replies), replies[0].text
        # the 10 requests of one loop turn: one call (200 events < ingest_call_max_events), every shard in it
        keys = Keys.from_settings(settings)
        shards = {keys.shard_of(res["fingerprint"]) for r in replies for res in r.json()["results"]}
        assert spy.calls == [(len(shards), 200)] and len(shards) > 8
        # resent in another call, with 10 new events: the old ones are duplicates, the new ones counted
        again = await c.post("/errors/batch", json={"events": events[:30] + batch(10, "b")})
        results = again.json()["results"]
        assert [r.get("duplicate", False) for r in results] == [True] * 30 + [False] * 10
    live, pending, queued = await counted(settings)
    assert sorted(live.values()) == [1] * 10 + [5] * 40
    assert sum(live.values()) == pending == queued == 210
    assert await tasks(settings) == 2  # one task per call, whatever shards its events fall in


async def test_lost_reply_of_a_multi_shard_call_counts_nothing_twice(make_settings: Any) -> None:
    settings = make_settings(redis_shards=SHARDS)
    pid = await prepare(settings)
    async with api_client(settings) as c:
        ingestor = c._transport.app.state.ingestor  # type: ignore[attr-defined]
        lossy = LoseReplies(ingestor.script, lose=1)
        ingestor.script = lossy
        events = batch(60, "c", groups=30)
        r = await c.post("/errors/batch", json={"events": events})
        assert r.status_code == 202, r.text
        assert lossy.calls == 2  # the run whose reply was lost, then its re-run (same token)
        assert (r.json()["accepted"], r.json()["duplicates"]) == (60, 0)  # the re-run knew its own run
        states = JobStates(ingestor.runtime.redis, ingestor.keys, settings)
        assert await states.get([(pid, e["event_id"]) for e in events]) == [QUEUED] * 60
    live, pending, queued = await counted(settings)
    assert sorted(live.values()) == [2] * 30
    assert pending == queued == 60
    assert await tasks(settings) == 1


async def test_a_full_queue_sheds_the_whole_call(make_settings: Any) -> None:
    # 16 per stream: one shard's share of the soft limit
    settings = make_settings(redis_shards=SHARDS, queue_soft_limit=16 * SHARDS)
    await prepare(settings)
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    try:
        for k in keys.all_shards:  # every shard's stream at its share: whichever stream a task goes to is full
            for _ in range(16):
                await redis.xadd(k.stream, {"data": b"{}"})
    finally:
        await redis.aclose()
    async with api_client(settings) as c:
        r = await c.post("/errors/batch", json={"events": batch(50, "d")})
        assert r.status_code == 503 and r.json()["error"] == "backpressure", r.text
    live, pending, _ = await counted_ignoring_fillers(settings)
    assert (live, pending) == ({}, 0)  # nothing counted in any shard
    assert await tasks(settings) == 16 * SHARDS


async def counted_ignoring_fillers(settings: Settings) -> tuple[dict[str, int], int, None]:
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    try:
        live: dict[str, int] = {}
        pending = 0
        for k in keys.all_shards:
            live.update({fp.decode(): int(n) for fp, n in (await redis.hgetall(k.live_counts)).items()})  # type: ignore[misc]
            pending += sum(split_deltas(await redis.hgetall(k.pending_counts))[0].values())  # type: ignore[misc]
        return live, pending, None
    finally:
        await redis.aclose()


async def test_a_task_spanning_shards_is_stored_once_and_its_states_set(make_settings: Any) -> None:
    settings = make_settings(redis_shards=SHARDS, sync_interval=0.5, write_batch_delay=0.01)
    pid = await prepare(settings)
    events = batch(120, "e")
    async with api_client(settings) as c:
        r = await c.post("/errors/batch", json={"events": events})
        assert r.status_code == 202 and r.json()["accepted"] == 120
        ingestor = c._transport.app.state.ingestor  # type: ignore[attr-defined]
        states = JobStates(ingestor.runtime.redis, ingestor.keys, settings)
        assert await tasks(settings) == 1  # one task, events of many shards
        stop = asyncio.Event()
        roles = [asyncio.create_task(run_worker(settings, "w-sections", handle_signals=False, stop=stop)),
                 asyncio.create_task(run_scheduler(settings, "s-sections", handle_signals=False, stop=stop))]
        try:
            async def stored() -> bool:
                return await db_totals(settings) == (120, 120)

            await wait_for(stored, 30, "120 events of one multi-shard task stored and counted once")

            async def succeeded() -> bool:
                return await states.get([(pid, e["event_id"]) for e in events]) == [SUCCEEDED] * 120

            # each event's state lives in its fingerprint's shard: the worker found every one
            await wait_for(succeeded, 10, "every event's job state set to succeeded in its own shard")
            assert await tasks(settings) == 0
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*roles, return_exceptions=True), 30)
