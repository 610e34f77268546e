"""In-process API (real Redis, real DB) through httpx, with the app's lifespan run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.db import repo
from core.db.engine import make_engine
from core.db.migrate import migrate
from core.settings import Settings
from faultline.asgi import create
from faultline.redis_topology import LocalRedisCluster
from faultline.services import RedisServer

INGEST_KEY = "test-ingest-key-0123456789"


async def prepare(settings: Settings, key: str = INGEST_KEY) -> int:
    await migrate(settings)
    engine = make_engine(settings)
    async with engine.begin() as conn:
        pid, _ = await repo.ensure_project(conn, "test", key)
    await engine.dispose()
    return pid


@asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            client.headers.update({"X-Faultline-Key": INGEST_KEY,
                                   "Authorization": f"Bearer {settings.admin_token}"})
            yield client


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (no AOF): it may SIGSTOP it, its command counters count its calls only."""
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    yield server
    server.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalRedisCluster]:
    """A local Redis Cluster of this test's own (3 primaries + 3 replicas), every node stopped by its pid."""
    c = LocalRedisCluster(tmp_path / "cluster")
    try:
        yield c.start()
    finally:
        for node in c.nodes:
            node.stop()


@pytest.fixture
def client_factory() -> Callable[[Settings], Any]:
    return api_client


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a child process see these settings."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTLINE_")}
    env.update(settings.to_env_map(skip=("node_name",)))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture
def spawn(request: pytest.FixtureRequest) -> Any:
    """Start `faultline <args>` as a real child process; stopped (SIGTERM, then SIGKILL) at teardown."""
    import subprocess
    import sys

    from faultline.procs import Child, FileSink
    from tests.conftest import ARTIFACTS

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = sink = FileSink(ARTIFACTS / f"{request.node.name}.children.log", "a")
    children: list[Child] = []

    def start(name: str, args: list[str], settings: Settings, **extra: str) -> Child:
        child = Child(name, [sys.executable, "-m", "faultline", *args],
                      env_of(settings, FAULTLINE_NODE_NAME=name, **extra), sink=sink, restart=False).start()
        children.append(child)
        return child

    yield start
    # SIGTERM to every child first, then wait for each (SIGKILL after 10 s, as Child.stop): they drain and
    # exit side by side (a node's drain delay, a scheduler's last sync) instead of one after another
    for child in children:
        child.terminate()
    for child in children:
        if child.proc is not None:
            try:
                child.proc.wait(10)
            except subprocess.TimeoutExpired:
                child.kill_group()
    log.close()
