"""SIGTERM on the node a live-feed client is connected to.

The node's drain (core/drain.py, driven by faultline/uvicorn_worker.py) closes its listener, then runs the
realtime reconnect hook: the coalescer hands its lease over, clients get `feed:reconnect` and their sockets are closed.
The client reconnects through nginx to another node, re-subscribes, merges the snapshot, and must end with
exactly the live totals Redis holds, with no group missing (groups created while it was away included).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from faultline.stack import Stack
from tests.e2e.test_feed import FeedClient, live_totals, start_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # 1 s drain delay (default 5 s) keeps the test short; the sequence is the same
    s = start_stack(tmp_path_factory.mktemp("drain"), "test_feed_drain.log", FAULTLINE_DRAIN_DELAY="1")
    yield s
    s.stop()


async def test_sigterm_on_the_clients_node_moves_it_to_another_node_and_its_view_ends_complete(
        stack: Stack) -> None:
    client = await FeedClient(stack.url, stack.admin_token).connect()
    home = client.nodes[0]
    run = uuid.uuid4().hex[:6]
    accepted: dict[str, int] = {}
    stop = asyncio.Event()

    async def ingest() -> None:  # ~300 events/s through nginx, a new group every 5 batches
        async with httpx.AsyncClient(base_url=stack.url, headers={"X-Faultline-Key": stack.ingest_key},
                                     timeout=10) as http:
            k = 0
            while not stop.is_set():
                tags = [f"drain-{run}-{k // 5}", f"drain-{run}-steady"]
                events = [{"message": f"worker crashed {tags[j % 2]}", "service": "jobs",
                           "fingerprint": tags[j % 2]} for j in range(20)]
                r = await http.post("/errors/batch", json={"events": events})
                if r.status_code == 202:
                    for res in r.json()["results"]:
                        accepted[res["fingerprint"]] = accepted.get(res["fingerprint"], 0) + 1
                k += 1
                await asyncio.sleep(0.05)

    load = asyncio.create_task(ingest())
    try:
        await asyncio.sleep(1.5)
        node = next(n for n in stack.nodes if n.name == home)
        sigterm = time.monotonic()
        node.signal(15)
        deadline = time.monotonic() + 20
        while len(client.nodes) < 2 or not client.subscribed.is_set():
            assert time.monotonic() < deadline, f"client did not come back (nodes {client.nodes})"
            await asyncio.sleep(0.05)
        moved = time.monotonic() - sigterm
        assert client.nodes[1] != home
        await asyncio.sleep(2.0)  # keep ingesting on the new node: new groups keep arriving
    finally:
        stop.set()
        await load
    try:
        assert client.named("feed:reconnect"), "the draining node did not tell the client to go"
        assert node.proc is not None and node.proc.wait(30) == 0
        deadline = time.monotonic() + 5
        while True:
            truth = {fp: n for fp, n in (await live_totals(stack)).items() if fp in accepted}
            mine = {fp: client.view.get(fp) for fp in truth}
            if mine == truth or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert set(truth) == set(accepted) and len(truth) >= 4  # groups created before, during and after
        assert mine == truth
        assert truth == accepted  # every accepted event counted once
        print(f"\nclient moved {home} -> {client.nodes[1]} {moved:.2f} s after SIGTERM; "
              f"view complete: {len(truth)} groups, {sum(truth.values())} events")
    finally:
        await client.sio.disconnect()
