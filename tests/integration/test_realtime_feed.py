"""The feed's write side against a real redis-server: ingest.lua marks groups, feed_take.lua + FeedCoalescer
turn them into exact deltas, published on the Socket.IO channel (read back here with a plain SUBSCRIBE)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from api.ingest import Ingestor
from core.events import LogErrorIn
from core.feed import FeedCoalescer
from core.runtime import Runtime
from core.settings import Settings
from core.spikes import SpikeDetector


async def _published(rt: Runtime, out: list[dict[str, Any]], ready: asyncio.Event) -> None:
    pubsub = rt.redis.pubsub()
    await pubsub.subscribe(rt.keys.socketio_channel)
    ready.set()
    try:
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg:
                out.append(orjson.loads(msg["data"]))
    finally:
        await pubsub.aclose()


# 8 key shards on one server: every shard's take goes out in one round trip (core/feed.py), same totals
@pytest.mark.parametrize("shards", [1, 8])
async def test_two_overlapping_coalescers_emit_disjoint_deltas_that_sum_to_the_totals(
        make_settings: Callable[..., Settings], shards: int) -> None:
    settings = make_settings(redis_shards=shards)
    rt = Runtime.open(settings)
    published: list[dict[str, Any]] = []
    ready = asyncio.Event()
    listener = asyncio.create_task(_published(rt, published, ready))
    await ready.wait()
    try:
        ingestor = Ingestor(rt)
        # two coalescers ticking at once, as right after a lease hand-over: no lease, both emit
        a, b = FeedCoalescer(settings, rt.redis, "a"), FeedCoalescer(settings, rt.redis, "b")
        sent: dict[str, int] = {}
        for round_ in range(40):
            items = [LogErrorIn(message=f"m{i}", service=f"s{i % 2}", fingerprint=f"g{i}") for i in range(12)
                     for _ in range(round_ % 3 + 1)]
            for acc in await ingestor.ingest(1, items):
                sent[acc.fingerprint] = sent.get(acc.fingerprint, 0) + 1
            await asyncio.gather(a.tick(), b.tick())
        await asyncio.gather(a.tick(), b.tick())
        # every published message reaches the listener (0.3 s was too short on a loaded machine)
        deadline = time.monotonic() + 10
        while len(published) < a.messages + b.messages and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        deltas: dict[str, int] = {}
        news: dict[str, int] = {}
        last_total: dict[str, int] = {}
        for msg in published:
            payload = msg["data"][0]
            if msg["room"] != "project:1":
                continue
            if msg["event"] == "error:count":
                for c in payload["counts"]:
                    deltas[c["fingerprint"]] = deltas.get(c["fingerprint"], 0) + c["delta"]
                    last_total[c["fingerprint"]] = max(last_total.get(c["fingerprint"], 0), c["total"])
            elif msg["event"] == "error:new":
                for g in payload["groups"]:
                    news[g["fingerprint"]] = news.get(g["fingerprint"], 0) + 1
                    assert g["project_id"] == 1 and g["message"] and g["service"] in ("s0", "s1")
        assert deltas == sent and last_total == sent
        assert len({rt.keys.shard_of(fp) for fp in sent}) >= min(shards, 4)  # the groups span the shards
        assert news == dict.fromkeys(sent, 1)  # error:new exactly once per group, whoever emitted it
        service_rooms = {m["room"] for m in published if m["room"].startswith("service:")}
        assert service_rooms == {"service:1:s0", "service:1:s1"}
        assert a.messages + b.messages == len(published)
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await rt.close()


async def test_one_coalescer_leads_and_another_takes_over_when_it_stops(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(feed_interval=0.05)
    rt = Runtime.open(settings)
    try:
        a, b = FeedCoalescer(settings, rt.redis, "a"), FeedCoalescer(settings, rt.redis, "b")
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        run_a = asyncio.create_task(a.run(stop_a))
        await asyncio.sleep(0.2)
        run_b = asyncio.create_task(b.run(stop_b))
        await asyncio.sleep(0.3)
        assert (a.leader, b.leader) == (True, False)
        stop_a.set()  # a graceful stop releases the lease at once: no 2 s gap
        await run_a
        await asyncio.sleep(0.3)
        assert b.leader
        stop_b.set()
        await run_b
    finally:
        await rt.close()


def test_spike_detector_flags_a_jump_not_a_steady_rate_nor_a_new_group() -> None:
    d = SpikeDetector()
    t = 1000.0
    assert d.observe("g", 500, t) is None  # first sight: error:new's business, not a spike
    spikes = []
    for _ in range(120):  # 30 s at a steady 8 events/s
        t += 0.25
        spikes.append(d.observe("g", 2, t))
    assert not any(spikes)
    found = None
    for _ in range(8):  # then 400 events/s
        t += 0.25
        found = found or d.observe("g", 100, t)
    assert found is not None and found["rate"] >= 5 * found["baseline"] and found["rate"] >= 20
    t += 0.25
    assert d.observe("g", 100, t) is None  # cooldown: one report per spike, not one per tick
