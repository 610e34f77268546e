"""Socket.IO limits on a real uvicorn server (in this process, real Redis, real python-socketio clients):
a bad-token connect flood is refused at the door and logged in summary, a `subscribe` flood is answered
`rate_limited`, and `subscribe` reads only the groups of the projects it asks for."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import socketio
import uvicorn
from redis.asyncio import Redis

from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings
from faultline.asgi import create
from faultline.services import free_port
from realtime import rooms
from realtime.limits import SocketLimits
from realtime.route import SocketIORoute
from tests.integration.conftest import INGEST_KEY, prepare
from tests.waiting import wait_for


@contextlib.asynccontextmanager
async def node(settings: Settings) -> AsyncIterator[tuple[str, SocketLimits]]:
    app = create(settings)
    [route] = [m for m in app.user_middleware if m.cls is SocketIORoute]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", route.kwargs["limits"]
    finally:
        server.should_exit = True
        await task


async def connect(url: str, token: str, ip: str) -> socketio.AsyncClient:
    sio = socketio.AsyncClient(reconnection=False)
    # 127.0.0.1 is a trusted proxy (the default): its X-Forwarded-For names the client
    await sio.connect(url, transports=["websocket"], auth={"token": token}, headers={"X-Forwarded-For": ip},
                      wait_timeout=5)
    return sio


@pytest.fixture
async def settings(make_settings: Callable[..., Settings]) -> Settings:
    s = make_settings(socket_connect_limit="100/10s", socket_bad_token_limit="5/m", socket_event_limit="10/m",
                      socket_log_interval=1.0)
    await prepare(s)
    return s


async def test_bad_token_flood_is_refused_at_the_door_and_logged_in_summary(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="faultline.realtime")
    attempts = 120
    async with node(settings) as (url, limits):
        errors: list[str] = []
        started = time.monotonic()
        for i in range(attempts):
            sio = socketio.AsyncClient(reconnection=False)
            try:
                await sio.connect(url, transports=["websocket"], auth={"token": f"guess-{i}"},
                                  headers={"X-Forwarded-For": "203.0.113.9"}, wait_timeout=5)
            except socketio.exceptions.ConnectionError as exc:
                errors.append(str(exc))
            else:
                pytest.fail("a bad token connected")
            finally:
                await sio.disconnect()
        flood_s = time.monotonic() - started
        # the first 5 reached the Socket.IO handshake (refused by the namespace: bad token); the rest were
        # refused at the door, before engine.io: a failed websocket upgrade
        assert errors[:5] == ["One or more namespaces failed to connect: /"] * 5, errors[:8]
        assert set(errors[5:]) == {"Connection error"}, set(errors[5:])
        assert len(errors) == attempts
        # the bad-token window holds 5 entries: on_connect ran 5 times, not 120
        assert len(limits.windows.windows["bad_token:203.0.113.9"]) == 5
        # another client (another address, a good token) connects and subscribes during the flood
        good = await connect(url, settings.admin_token or "", "198.51.100.20")
        answer = await good.call("subscribe", {"rooms": ["project:*"]}, timeout=5)
        assert answer["ok"] is True
        await good.disconnect()
        await asyncio.sleep(1.3)  # the last summary is written one interval after the flood
    lines = [r.getMessage() for r in caplog.records if "refus" in r.getMessage()]
    assert 1 <= len(lines) <= 2 + flood_s / 1.0, lines  # one line, then one per second: not one per attempt
    summed = sum(int(m.split(": ")[1].split(" ")[0]) for m in lines if m.startswith("socket refusals"))
    assert summed + 1 == attempts, lines  # every refusal is in a count: the first line + the summaries
    assert limits.refusals.total == attempts


async def test_subscribe_flood_is_answered_rate_limited(settings: Settings,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="faultline.realtime")
    async with node(settings) as (url, _):
        sio = await connect(url, settings.admin_token or "", "198.51.100.30")
        started = time.monotonic()
        answers = [await sio.call("subscribe", {"rooms": ["project:*"]}, timeout=5) for _ in range(40)]
        took = time.monotonic() - started
        other = await connect(url, settings.admin_token or "", "198.51.100.31")
        fresh = await other.call("subscribe", {"rooms": ["project:*"]}, timeout=5)
        await sio.disconnect()
        await other.disconnect()
    assert [a["ok"] for a in answers] == [True] * 10 + [False] * 30
    assert {a.get("error") for a in answers[10:]} == {"rate_limited"}
    assert all(isinstance(a["retry_after"], int) and a["retry_after"] >= 1 for a in answers[10:])
    assert fresh["ok"] is True  # per client: another address is not affected
    # the first refusal, then one summary per 1 s interval
    assert len([r for r in caplog.records if "refus" in r.getMessage()]) <= 2 + took


class SpyRedis(Redis):
    """Records every command sent: which keys a snapshot touches."""

    calls: list[tuple[Any, ...]]

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.calls.append(args)
        return await super().execute_command(*args, **options)


async def test_subscribe_reads_only_the_groups_of_its_projects(settings: Settings) -> None:
    keys = Keys.from_settings(settings)
    async with node(settings) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            mine = [{"message": f"mine {i}", "fingerprint": f"m{i}", "service": "web" if i % 2 else "db"}
                    for i in range(4)]
            r = await http.post("/errors/batch", json={"events": mine}, headers={"X-Faultline-Key": INGEST_KEY})
            assert r.status_code == 202, r.text
        redis = make_redis(settings)
        pid = await prepare(settings)  # the existing project: its id
        # 2,000 groups of another project, straight into the feed structures as ingest.lua writes them
        other = pid + 1
        await redis.hset(keys.feed_groups, mapping={
            f"{i:064x}": f'{{"fingerprint":"{i:064x}","project_id":{other},"service":"web","message":"x"}}'
            for i in range(2000)})
        await redis.sadd(keys.feed_index(other), *[f"{i:064x}" for i in range(2000)])
        spy = SpyRedis(connection_pool=redis.connection_pool)
        spy.calls = []
        snap = await rooms.snapshot(spy, keys, [f"project:{pid}"])
        assert sorted(g["message"] for g in snap) == [f"mine {i}" for i in range(4)]
        assert all(g["count"] == 1 for g in snap)
        touched = [c for c in spy.calls if keys.feed_groups in c]
        assert [c[0] for c in touched] == ["HMGET"] and len(touched[0]) == 2 + 4  # its 4 groups, no more
        assert not any(c[0] in ("HGETALL", "HSCAN", "HVALS", "HKEYS") for c in spy.calls)
        spy.calls = []
        web = await rooms.snapshot(spy, keys, [f"service:{pid}:web"])
        assert sorted(g["message"] for g in web) == ["mine 1", "mine 3"]
        # through the real server: the subscribe answer carries the same snapshot
        sio = await connect(url, settings.admin_token or "", "198.51.100.40")
        answer = await sio.call("subscribe", {"rooms": [f"project:{pid}"]}, timeout=5)
        await sio.disconnect()
        assert answer["ok"] and sorted(g["message"] for g in answer["snapshot"]) == [f"mine {i}" for i in range(4)]
        # an upgrade: summaries written before the index existed are indexed once, in bounded steps
        await redis.delete(keys.feed_index(pid), keys.feed_index_built)
        assert await rooms.build_index(redis, keys, step=100) == 4  # the other project's were all there
        assert await redis.scard(keys.feed_index(pid)) == 4
        assert await rooms.build_index(redis, keys) == 0  # done once
        await redis.aclose()


async def test_a_real_api_process_logs_a_bad_token_flood_in_a_few_lines(
        make_settings: Callable[..., Settings], spawn: Any, request: pytest.FixtureRequest) -> None:
    """`faultline api` as a child process (gunicorn + uvicorn, its real logging): 80 bad-token connects
    are refused, and its whole output about them is a few lines, not one (or three) per attempt."""
    from tests.conftest import ARTIFACTS

    settings = make_settings(socket_log_interval=2.0, drain_delay=0)  # stopped at once after the flood
    await prepare(settings)
    port = free_port()
    log_file = ARTIFACTS / f"{request.node.name}.children.log"
    offset = log_file.stat().st_size if log_file.exists() else 0  # the fixture appends: this run only
    child = spawn("api-flood", ["api", "--port", str(port)], settings)
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(timeout=2) as http:
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/health/live")).status_code == 200:
                    break
            await asyncio.sleep(0.1)
    refused = 0
    started = time.monotonic()
    for i in range(80):
        sio = socketio.AsyncClient(reconnection=False)
        try:
            await sio.connect(url, transports=["websocket"], auth={"token": f"bad-{i}"}, wait_timeout=5)
        except socketio.exceptions.ConnectionError:
            refused += 1
        finally:
            await sio.disconnect()
    assert refused == 80
    flood_s = time.monotonic() - started

    async def summarised() -> bool:  # every refusal after the first in a summary: written within one log interval
        text = log_file.read_bytes()[offset:].decode()
        return sum(int(n) for n in re.findall(r"socket refusals in the last \d+ s: (\d+)", text)) + 1 >= refused
    await wait_for(summarised, 5, "the summary of the flood in the log", every=0.1)
    child.stop(timeout=10)
    text = log_file.read_bytes()[offset:].decode()
    about = [line for line in text.splitlines() if "faultline.realtime" in line or "WebSocket" in line
             or re.search(r"connection (rejected|open|closed)", line)]
    # the first refusal, then one summary per 2 s interval: not one line per attempt
    assert 2 <= len(about) <= 2 + flood_s / 2.0, (flood_s, about)
    assert any("socket refusals in the last" in line for line in about), about
