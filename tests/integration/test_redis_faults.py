"""Redis faults under load, against a real redis-server this test owns (so it can kill or freeze it), a real
worker and scheduler process, and the API in-process.

What must hold: every event answered 202 is stored and counted exactly once; the SAME worker
processes consume again within 5 s of Redis returning; events sent after the fault reach `succeeded` in
GET /jobs/{id}; the live feed's pub/sub comes back; `worker-check` fails while a worker cannot fetch and
passes again once it can. Clients resend what got a 503 with the same event_id, as real SDKs do: a 503
means "not counted", and the dedup makes the resend safe whatever happened to the first try.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from core import heartbeat
from core.db.engine import make_engine
from core.db.models import ErrorGroup, Sample
from core.keys import Keys
from core.pubsub import ResilientRedisManager
from core.redis import make_redis
from core.settings import Settings
from faultline.services import RedisServer
from tests.integration.conftest import api_client, env_of, prepare
from tests.waiting import wait_for

FINGERPRINTS = 12


@pytest.fixture
def own_redis(tmp_path: Path) -> Any:
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    yield server
    if server.proc and server.proc.process:
        os.kill(server.proc.process.pid, signal.SIGCONT)  # never leave a frozen server behind
    server.stop()


def kill_and_restart(server: RedisServer, down_for: float) -> float:
    """SIGKILL, stay down `down_for` s, start again on the same port from the same AOF; returns when."""
    assert server.proc is not None
    server.proc.kill(sig=signal.SIGKILL)
    time.sleep(down_for)
    server.start()
    return time.time()


@dataclass
class Load:
    """Concurrent senders of small batches, each event with its own id, resending 503s with the same ids."""

    client: httpx.AsyncClient
    accepted: dict[str, float] = field(default_factory=dict)  # event_id -> time of its 202
    refused: list[dict[str, Any]] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    slowest: float = 0.0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @staticmethod
    def events(n: int, tag: str) -> list[dict[str, Any]]:
        return [{"event_id": uuid.uuid4().hex, "message": f"{tag}Error: boom {i}",
                 "fingerprint": f"fp-{i % FINGERPRINTS}"} for i in range(n)]

    async def send(self, batch: list[dict[str, Any]]) -> int:
        start = time.monotonic()
        try:
            r = await self.client.post("/errors/batch", json={"events": batch})
            status = r.status_code
        except httpx.HTTPError:
            status = 0
        self.slowest = max(self.slowest, time.monotonic() - start)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 202:
            now = time.time()
            self.accepted.update({e["event_id"]: now for e in batch})
        else:
            self.refused.extend(batch)
        return status

    async def sender(self) -> None:
        while not self.stop.is_set():
            await self.send(self.events(10, "Load"))
            await asyncio.sleep(0.02)

    async def finish(self) -> None:
        """Stop the senders, then resend every refused event (same ids) until it is accepted."""
        self.stop.set()
        await asyncio.gather(*self.tasks)
        await self.resend_refused()

    async def resend_refused(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.refused:
            assert time.monotonic() < deadline, f"{len(self.refused)} events still refused"
            batch, self.refused = self.refused[:100], self.refused[100:]
            if await self.send(batch) != 202:
                await asyncio.sleep(0.2)


@asynccontextmanager
async def load(settings: Settings, senders: int = 3, kind: type[Load] = Load) -> AsyncIterator[Load]:
    async with api_client(settings) as client:
        lo = kind(client)
        lo.tasks = [asyncio.create_task(lo.sender()) for _ in range(senders)]
        try:
            yield lo
        finally:
            lo.stop.set()
            await asyncio.gather(*lo.tasks)


async def wait_all_stored(settings: Settings, ids: set[str], timeout: float) -> None:
    """Queue and retries empty, every id a stored sample, and the synced counts equal to len(ids)."""
    redis = make_redis(settings, timeout=5)
    keys = Keys.from_settings(settings)
    engine = make_engine(settings)

    async def done() -> bool:
        if await redis.xlen(keys.stream) or await redis.zcard(keys.retries):
            return False
        async with engine.connect() as conn:
            total = (await conn.execute(select(func.coalesce(func.sum(ErrorGroup.count), 0)))).scalar_one()
        return int(total) >= len(ids)

    try:
        await wait_for(done, timeout, "every accepted event stored and counted")
        await asyncio.sleep(1.5)  # a few more sync intervals: an extra (double) count would show now
        async with engine.connect() as conn:
            total = (await conn.execute(select(func.coalesce(func.sum(ErrorGroup.count), 0)))).scalar_one()
            stored = [r[0] for r in (await conn.execute(select(Sample.event_id))).all()]
        assert int(total) == len(ids), (int(total), len(ids))  # counted exactly once
        assert len(stored) == len(set(stored)) and set(stored) == ids  # stored exactly once, none missing
        assert await redis.llen(keys.dead_letters) == 0  # an outage never dead-letters
    finally:
        await redis.aclose()
        await engine.dispose()


def worker_check(settings: Settings, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "faultline", "worker-check", "--name", name],
                          env=env_of(settings), capture_output=True, text=True, timeout=60)


async def beat_of(settings: Settings, name: str) -> dict[str, float] | None:
    redis = make_redis(settings, timeout=2)
    try:
        return await heartbeat.read(redis, Keys.from_settings(settings), "worker", name)
    except Exception:
        return None
    finally:
        await redis.aclose()


def fault_settings(make_settings: Any, server: RedisServer) -> Settings:
    return make_settings(redis_url=server.url, sync_interval=0.5, samples_per_group=100_000, redeliver_after=3.0,
                         retry_base_delay=0.2, retry_max_delay=1.0, worker_stall_after=3.0)


async def start_processes(settings: Settings, spawn: Any) -> list[Any]:
    await prepare(settings)
    procs = [spawn("worker-1", ["worker"], settings), spawn("worker-2", ["worker"], settings),
             spawn("scheduler-1", ["scheduler"], settings)]

    async def beating() -> bool:
        return all([await beat_of(settings, "worker-1"), await beat_of(settings, "worker-2")])

    await wait_for(beating, 90, "both workers' heartbeats")  # a loaded machine imports slowly
    return procs


async def test_redis_sigkill_under_load_loses_nothing_and_same_workers_resume(
        make_settings: Any, own_redis: RedisServer, spawn: Any) -> None:
    settings = fault_settings(make_settings, own_redis)
    procs = await start_processes(settings, spawn)
    pids = {p.name: p.pid for p in procs}
    feed: list[bytes] = []
    listener = ResilientRedisManager(settings, Keys.from_settings(settings).socketio_channel)

    async def listen() -> None:
        async for data in listener._listen():
            feed.append(data)

    feed_task = asyncio.create_task(listen())
    async with load(settings) as lo:
        await asyncio.sleep(2)
        back = await asyncio.to_thread(kill_and_restart, own_redis, 2.0)
        # the SAME worker processes fetch again within 5 s of Redis returning
        for name in ("worker-1", "worker-2"):
            async def fetched_since(name: str = name) -> bool:
                beat = await beat_of(settings, name)
                return beat is not None and beat["last_fetch"] > back
            await wait_for(fetched_since, 5 - (time.time() - back), f"{name} to fetch after the restart")
        feed_mark = len(feed)
        await asyncio.sleep(2)
        await lo.finish()
    assert all(p.alive() and p.pid == pids[p.name] for p in procs), "a process died instead of recovering"

    # events sent after the restart reach `succeeded` within 10 s
    async with api_client(settings) as c:
        after = Load.events(20, "After")
        sent = time.monotonic()
        assert (await c.post("/errors/batch", json={"events": after})).status_code == 202
        lo.accepted.update({e["event_id"]: time.time() for e in after})

        async def succeeded() -> bool:
            for e in after:
                r = await c.get(f"/jobs/{e['event_id']}")
                if r.status_code != 200 or r.json()["state"] != "succeeded":
                    return False
            return True

        await wait_for(succeeded, 10, "post-restart events to succeed")
        assert time.monotonic() - sent < 10
    assert lo.statuses.get(202, 0) > 0 and sum(lo.statuses.values()) > lo.statuses[202]  # the fault was felt
    await wait_all_stored(settings, set(lo.accepted), 60)
    # the live feed came back: the coalescer published, and the resilient listener received, after restart
    async def feed_back() -> bool:
        return len(feed) > feed_mark

    await wait_for(feed_back, 10, "feed messages after the restart")
    feed_task.cancel()
    await asyncio.gather(feed_task, return_exceptions=True)
    await listener._close()


async def test_redis_frozen_10s_everything_recovers_by_itself(
        make_settings: Any, own_redis: RedisServer, spawn: Any) -> None:
    settings = fault_settings(make_settings, own_redis)
    procs = await start_processes(settings, spawn)
    pids = {p.name: p.pid for p in procs}
    assert own_redis.proc is not None and own_redis.proc.process is not None
    redis_pid = own_redis.proc.process.pid
    async with load(settings) as lo:
        await asyncio.sleep(1.5)
        os.kill(redis_pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        await asyncio.sleep(4)
        during = await asyncio.to_thread(worker_check, settings, "worker-1")
        await asyncio.sleep(max(0.0, 10 - (time.monotonic() - frozen_at)))
        os.kill(redis_pid, signal.SIGCONT)
        await asyncio.sleep(3)
        await lo.finish()
    assert during.returncode == 1, during.stdout  # a worker that cannot fetch fails the probe
    assert lo.statuses.get(503, 0) + lo.statuses.get(0, 0) > 0, lo.statuses  # the freeze was felt
    assert lo.slowest < 2.0, lo.slowest  # fast 503s, no request hanging through the freeze
    await wait_all_stored(settings, set(lo.accepted), 60)
    assert all(p.alive() and p.pid == pids[p.name] for p in procs), "a process died instead of recovering"
    after = await asyncio.to_thread(worker_check, settings, "worker-1")
    assert after.returncode == 0, after.stdout
    print(f"freeze: statuses {lo.statuses}, slowest request {lo.slowest:.2f}s")


async def test_worker_check_fails_for_a_stuck_worker_with_work_waiting(make_settings: Any, spawn: Any) -> None:
    # beats every 0.5 s, not 2 s: worker-check reads the progress a beat carries, so it sees the worker fetch
    # again (and its 30 events written) within 0.5 s instead of 2 s; the stall itself is judged on time alone
    settings = make_settings(worker_stall_after=2.0, heartbeat_interval=0.5)
    await prepare(settings)
    worker = spawn("worker-s", ["worker"], settings)

    async def beating() -> bool:
        return await beat_of(settings, "worker-s") is not None

    await wait_for(beating, 90, "the worker's heartbeat")
    assert (await asyncio.to_thread(worker_check, settings, "worker-s")).returncode == 0
    worker.signal(signal.SIGSTOP)  # alive, heartbeat key still there, but not consuming
    try:
        async with api_client(settings) as c:
            r = await c.post("/errors/batch", json={"events": Load.events(30, "Stuck")})
            assert r.status_code == 202
        await asyncio.sleep(2.5)
        stuck = await asyncio.to_thread(worker_check, settings, "worker-s")
        assert stuck.returncode == 1 and "stalled" in stuck.stdout, stuck.stdout
    finally:
        worker.signal(signal.SIGCONT)

    async def passes() -> bool:
        return (await asyncio.to_thread(worker_check, settings, "worker-s")).returncode == 0

    await wait_for(passes, 20, "worker-check to pass once the worker fetches again", every=0.5)
    redis = make_redis(settings, timeout=5)
    stream = Keys.from_settings(settings).stream

    async def drained() -> bool:  # fetching again: the batch is written and acked (acks delete) soon after
        return await redis.xlen(stream) == 0

    await wait_for(drained, 20, "the worker to drain the stream once it runs again", every=0.2)

    async def reported() -> bool:  # the heartbeat carries the progress within one beat (0.5 s here)
        beat = await beat_of(settings, "worker-s")
        return bool(beat) and float(beat["written"]) >= 30 and float(beat["fetched"]) >= 1

    await wait_for(reported, 10, "the heartbeat to report the 30 events written", every=0.5)
    await redis.aclose()


async def test_lost_stream_and_group_are_recreated_and_consumed(make_settings: Any, spawn: Any) -> None:
    """A Redis restart that lost its data (no AOF) leaves no stream and no group: XREADGROUP answers NOGROUP.
    The worker recreates the group (at id 0: everything queued since is delivered) and goes on."""
    settings = make_settings()
    await prepare(settings)
    keys = Keys.from_settings(settings)
    spawn("worker-n", ["worker"], settings)

    async def beating() -> bool:
        return await beat_of(settings, "worker-n") is not None

    await wait_for(beating, 90, "the worker's heartbeat")
    redis = make_redis(settings, timeout=5)
    async with api_client(settings) as c:  # started first: its own start-up creates the group
        await redis.delete(keys.stream)  # the data loss: stream and consumer group gone
        batch = Load.events(20, "AfterLoss")
        assert (await c.post("/errors/batch", json={"events": batch})).status_code == 202

        async def succeeded() -> bool:
            states = [(await c.get(f"/jobs/{e['event_id']}")).json().get("state") for e in batch]
            return states == ["succeeded"] * len(batch)

        await wait_for(succeeded, 20, "events queued after the loss to be stored")
    groups = await redis.xinfo_groups(keys.stream)
    assert [g["name"] for g in groups] == [keys.consumer_group.encode()]
    await redis.aclose()


async def test_a_worker_whose_listener_cannot_recover_exits_non_zero(make_settings: Any, spawn: Any) -> None:
    """An error waiting cannot fix (here WRONGTYPE: the stream key holds a string) ends the listener; the
    process must then exit non-zero for its supervisor, not stay up consuming nothing."""
    settings = make_settings()
    await prepare(settings)
    keys = Keys.from_settings(settings)
    worker = spawn("worker-x", ["worker"], settings)

    async def beating() -> bool:
        return await beat_of(settings, "worker-x") is not None

    await wait_for(beating, 90, "the worker's heartbeat")
    redis = make_redis(settings, timeout=5)
    await redis.delete(keys.stream)
    await redis.set(keys.stream, b"not a stream")

    async def exited() -> bool:
        return not worker.alive()

    await wait_for(exited, 30, "the worker to exit")
    assert worker.proc.returncode == 1
    await redis.aclose()


async def test_a_worker_started_while_redis_is_down_comes_up_by_itself(
        make_settings: Any, own_redis: RedisServer, spawn: Any, request: pytest.FixtureRequest) -> None:
    from tests.conftest import ARTIFACTS

    settings = fault_settings(make_settings, own_redis)
    await prepare(settings)
    assert own_redis.proc is not None
    own_redis.proc.kill(sig=signal.SIGKILL)
    worker = spawn("worker-late", ["worker"], settings)
    logfile = ARTIFACTS / f"{request.node.name}.children.log"

    async def waiting_for_redis() -> bool:  # it imported, found Redis down, and waits with backoff
        return logfile.exists() and "worker-late | " in logfile.read_text() and \
            "worker start-up failing" in logfile.read_text().split("worker-late | ", 1)[1]

    await wait_for(waiting_for_redis, 90, "the worker to find Redis down")
    await asyncio.sleep(3)
    assert worker.alive()
    await asyncio.to_thread(own_redis.start)

    async def beating() -> bool:
        return await beat_of(settings, "worker-late") is not None

    await wait_for(beating, 90, "the worker's heartbeat once Redis is back")
    async with api_client(settings) as c:
        batch = Load.events(10, "Late")
        assert (await c.post("/errors/batch", json={"events": batch})).status_code == 202

        async def succeeded() -> bool:
            states = [(await c.get(f"/jobs/{e['event_id']}")).json().get("state") for e in batch]
            return states == ["succeeded"] * len(batch)

        await wait_for(succeeded, 20, "events to be stored by the late worker")
    assert worker.alive()
