"""A 503 from ingest means "not counted" also when replies come late (real redis-server): a slowed reply
path (a TCP proxy that holds Redis's replies back), a starved event loop (blocked right after the re-run is
sent), a re-run that fails at once while the first run's reply is still on its way. Each of these answered
503 for counted events before api/ingestwait.py (every run kept awaited, a probe, the loop's lost time)."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError

from core.dedup import JobStates
from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings
from faultline.services import RedisServer
from tests.integration.conftest import api_client, prepare
from tests.integration.test_ingest_ambiguity import counted, event


class SlowReplies:
    """TCP proxy to Redis: requests pass at once, each reply chunk is held back `delay` seconds (in order).
    `stall(loop, s, marker)`: the next request that carries `marker` blocks `loop` for s seconds once it has
    passed (time.sleep in it: a starved event loop), and its reply is held back s + 150 ms: the loop wakes
    late, the reply later still (a reply already in the socket when the loop wakes is read in time on the
    default loop: the GRACE of api/ingestrun.py)."""

    def __init__(self, upstream: int) -> None:
        self.upstream, self.delay, self.hold_next = upstream, 0.0, 0.0
        self.stalling: tuple[asyncio.AbstractEventLoop, float, bytes] | None = None
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.closing = False
        self.sockets: list[socket.socket] = []

    def stall(self, loop: asyncio.AbstractEventLoop, seconds: float, marker: bytes) -> None:
        self.stalling = (loop, seconds, marker)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> SlowReplies:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self.closing = True
        for s in [self.server, *self.sockets]:
            s.close()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream))
            self.sockets += [client, up]
            held: queue.Queue[tuple[float, bytes]] = queue.Queue()
            for target, args in ((self._pipe, (client, up, None)), (self._pipe, (up, client, held)),
                                 (self._release, (held, client))):
                threading.Thread(target=target, args=args, daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, held: queue.Queue[tuple[float, bytes]] | None) -> None:
        try:
            while data := src.recv(65536):
                if held is None:
                    if self.stalling is not None and self.stalling[2] in data:  # the client has sent it
                        (loop, seconds, _), self.stalling = self.stalling, None
                        self.hold_next = seconds + 0.15  # set before Redis can answer
                        loop.call_soon_threadsafe(time.sleep, seconds)
                    dst.sendall(data)
                else:
                    held.put((time.monotonic() + max(self.delay, self.hold_next), data))
                    self.hold_next = 0.0
        except OSError:
            pass
        for s in (src, dst):
            s.close()

    def _release(self, held: queue.Queue[tuple[float, bytes]], dst: socket.socket) -> None:
        try:
            while True:
                due, data = held.get()
                time.sleep(max(0.0, due - time.monotonic()))
                dst.sendall(data)
        except OSError:
            pass


@pytest.fixture
def slow(redis_server: RedisServer) -> Iterator[SlowReplies]:
    proxy = SlowReplies(redis_server.port).start()
    yield proxy
    proxy.stop()


async def send(c: Any, i: int) -> tuple[int, str]:
    eid = uuid.uuid4().hex
    r = await c.post("/errors/log", json=event(i, event_id=eid))
    assert r.status_code in (202, 503), r.text
    return r.status_code, eid


async def assert_503_means_not_counted(settings: Settings, pid: int, answers: list[tuple[int, str]]) -> None:
    """Every 202'd event counted exactly once, every 503'd one not at all (read on Redis directly)."""
    await asyncio.sleep(1.0)  # whatever is still on its way has reached Redis
    states = JobStates(make_redis(settings, timeout=5), Keys.from_settings(settings), settings)
    found = await states.get([(pid, eid) for _, eid in answers])
    wrong = [(status, state) for (status, _), state in zip(answers, found, strict=True)
             if (status == 202) != (state is not None)]
    accepted = sum(status == 202 for status, _ in answers)
    assert (not wrong, await counted(settings)) == (True, (accepted, accepted)), (wrong, answers)


async def test_first_runs_late_reply_is_taken_not_a_503(make_settings: Any, slow: SlowReplies) -> None:
    """Replies 0.45 s late: run 1 (counted at once) answers after its 0.4 s wait. The old code cancelled it,
    re-ran (the re-run reports "mine"), cancelled that too at 0.8 s (its reply due at 0.85 s): 503, counted."""
    direct = make_settings()
    pid = await prepare(direct)
    async with api_client(make_settings(redis_url=slow.url)) as c:
        answers = [await send(c, 0)]  # sets the Redis clock offset at full speed
        slow.delay = 0.45
        answers += await asyncio.gather(*[send(c, i) for i in range(1, 7)])
        slow.delay = 0.0
    await assert_503_means_not_counted(direct, pid, answers)
    assert [s for s, _ in answers] == [202] * 7, answers


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_rerun_counted_while_the_event_loop_starved(make_settings: Any, slow: SlowReplies, loop: str) -> None:
    """Run 1 arrives late (refused, nothing counted); the re-run counts at once, then the loop is blocked for
    0.85 s from the moment the re-run was sent, and its reply comes 150 ms after that: past the re-run's wait
    (0.8 s budget) and redis-py's read timeout (0.5 s). The old code answered 503. Now a probe (deadline
    past) asks Redis, within the time the loop lost. Also on uvloop (as deployed: faultline/uvicorn_worker.py),
    which runs due timers before it reads sockets."""
    direct = make_settings()
    pid = await prepare(direct)
    calls: list[int] = []

    async def scenario() -> list[tuple[int, str]]:
        async with api_client(make_settings(redis_url=slow.url)) as c:
            ingestor = c._transport.app.state.ingestor  # type: ignore[attr-defined]
            real = ingestor.script

            async def starve(**kwargs: Any) -> Any:
                calls.append(len(calls) + 1)
                args = list(kwargs["args"])
                if len(calls) == 1:
                    args[6] = 1  # ARGV[7], the deadline: long past, so run 1 counts nothing
                elif len(calls) == 2:  # the loop blocks once the re-run has passed the proxy; its reply is held
                    slow.stall(asyncio.get_running_loop(), 0.85, real.sha.encode())
                return await real(keys=kwargs["keys"], args=args)

            answers = [await send(c, 0)]
            ingestor.script = starve
            answers.append(await send(c, 1))
            ingestor.script = real
            return answers

    answers = await (scenario() if loop == "asyncio" else asyncio.to_thread(uvloop.run, scenario()))
    await assert_503_means_not_counted(direct, pid, answers)
    assert len(calls) >= 2 and answers[1][0] == 202, (calls, answers)


async def test_first_runs_late_reply_while_reruns_fail_at_once(make_settings: Any, slow: SlowReplies) -> None:
    """Run 1 counts, its reply 0.45 s late; every re-run fails at once (a broken connection). The old code
    cancelled run 1 at 0.4 s and answered 503 when the budget ran out: counted."""
    direct = make_settings()
    pid = await prepare(direct)
    async with api_client(make_settings(redis_url=slow.url)) as c:
        ingestor = c._transport.app.state.ingestor  # type: ignore[attr-defined]
        real, calls = ingestor.script, []

        async def reruns_fail(**kwargs: Any) -> Any:
            calls.append(len(calls) + 1)
            if len(calls) > 1:
                raise RedisConnectionError("connection reset (failover)")
            return await real(**kwargs)

        answers = [await send(c, 0)]
        slow.delay, ingestor.script = 0.45, reruns_fail
        answers.append(await send(c, 1))
        slow.delay, ingestor.script = 0.0, real
    await assert_503_means_not_counted(direct, pid, answers)
    assert len(calls) >= 2 and answers[1][0] == 202, (calls, answers)


@contextlib.contextmanager
def replies_through(client: Any, after: Callable[[int, Any], Awaitable[Any]]) -> Iterator[list[int]]:
    """Every run of the API's ingest script (numbered from 1) runs in Redis for real; its reply then goes
    through `after(run, reply)`, which may hold it back or lose it. Yields the runs' numbers as they start."""
    ingestor = client._transport.app.state.ingestor
    real, calls = ingestor.script, list[int]()

    async def wrapper(**kwargs: Any) -> Any:
        calls.append(len(calls) + 1)
        run = calls[-1]
        return await after(run, await real(**kwargs))

    ingestor.script = wrapper
    try:
        yield calls
    finally:
        ingestor.script = real


async def test_the_runs_of_a_call_tell_the_same_one_counts(make_settings: Any) -> None:
    """Quota 10/s: run 1 counts 10 of 14 events, refuses 4, and its reply comes 0.45 s late; the re-run goes
    out at 0.4 s, when the quota has room for 4 more. It finds run 1's entries, so it only reports (counts
    nothing): whichever answer is taken (run 1's, first), it tells what was counted. (A re-run that counted
    the 4 made 14 counted for 10 accepted.)"""
    settings = make_settings(rate_limit_enabled=True, project_quota_per_second=10)
    await prepare(settings)
    async with api_client(settings) as c:
        async def late_first(run: int, result: Any) -> Any:
            # both ran in Redis at once; run 1's reply reaches us at 0.45 s, the re-run's at 0.6 s
            await asyncio.sleep(0.45 if run == 1 else 0.2)
            return result

        with replies_through(c, late_first) as calls:
            r = await c.post("/errors/batch", json={"events": [event(i) for i in range(14)]})
    assert r.status_code == 202 and len(calls) == 2, (r.text, calls)
    await asyncio.sleep(0.5)
    assert await counted(settings) == (r.json()["accepted"],) * 2, r.text


async def test_a_report_answers_admitted_what_its_run_admitted_and_counted(make_settings: Any) -> None:
    """The limiter's window is 300 ms: when the re-run reports, run 1's entry has left it (the key expired).
    The request's event was counted by run 1, so the report answers it admitted (a 429 says "not counted")."""
    settings = make_settings(rate_limit_enabled=True, rate_limits="tiny:3/300ms", redis_shards=1)
    await prepare(settings)
    async with api_client(settings) as c:
        async def lost_first(run: int, result: Any) -> Any:
            if run == 1:
                await asyncio.sleep(0.45)  # past run 1's wait: the re-run goes out at 0.4 s
                raise TimeoutError("reply lost after the script ran")
            return result

        with replies_through(c, lost_first) as calls:
            r = await c.post("/errors/log", json=event(1))
    assert (r.status_code, len(calls)) == (202, 2), (r.text, calls)
    assert await counted(settings) == (1, 1)
