"""Fixtures: real throwaway servers on free ports (never the ones the user runs).

- redis_server / mariadb_server: one process per test session.
- settings(): Settings with a unique key prefix per test (isolation without FLUSHALL) and a fresh DB.
- db_url: parametrised over SQLite and MariaDB for storage tests.
- stack_factory: the whole local stack (faultline/stack.py), as `faultline up` runs it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from core.settings import Settings
from core.settings import sqlite_url as sqlite_url_of
from faultline.mariadb import MariaDBServer
from faultline.procs import FileSink
from faultline.services import RedisServer
from faultline.stack import Stack, StackConfig

# Property tests draw the same examples on every run (derandomize): `make test` in CI must not pass or fail by
# luck; to hunt for new counterexamples run them with HYPOTHESIS_PROFILE=explore.
hypothesis_settings.register_profile("ci", derandomize=True)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The suite runs on one Redis with one key shard (the single-server default) unless told otherwise:
# `FAULTLINE_REDIS_SHARDS=4 pytest tests/...` runs it sharded; FAULTLINE_* variables reach the stacks' children.

ARTIFACTS = Path(os.environ.get("FAULTLINE_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
# In-process APIs (make_settings) and stacks that stop nodes under traffic (BASE_ENV) drain 1 s, not the
# default 5 s: the default waits for a load balancer's readiness probes to notice; a test stack's nginx is
# reloaded by the stack itself. The drain tests set their own (tests/e2e/test_drain.py, test_probes.py).
TEST_DRAIN_DELAY = "1"
# A stack whose nodes are stopped only at its teardown drains 0 s: the stack stops nginx first, so a node's
# drain delay there served nobody and cost each stack stop ~1 s. Tests that stop a node under traffic set
# their own (BASE_ENV in tests/e2e/stack_checks.py, test_feed_drain.py, test_probes.py, the chaos harness).
STACK_DRAIN_DELAY = "0"


@pytest.fixture(scope="session", autouse=True)
def mariadb_installed_once(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """mariadb-install-db takes 3-5 s on this machine and a run starts a dozen plain MariaDB servers (the
    session's, the e2e stacks', the fault tests' own): the first of them installs for real into a template,
    every later one gets a copy of those very files (a cleanly shut down, freshly installed data directory)
    in ~0.2 s. Galera nodes and the servers of `faultline up` children still install for real."""
    install = MariaDBServer.install
    templates: dict[tuple[str, str], Path] = {}

    def from_template(server: MariaDBServer, datadir: Path) -> None:
        if type(server) is not MariaDBServer:  # Galera: another OS user, its own options
            install(server, datadir)
            return
        key = (server.os_user(), server.log_file_size)  # what the install step depends on
        if key not in templates:
            template = tmp_path_factory.mktemp("mariadb-template") / "data"
            template.mkdir()
            install(server, template)
            templates[key] = template
        shutil.copytree(templates[key], datadir, dirs_exist_ok=True)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MariaDBServer, "install", from_template)
        yield


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    server = MariaDBServer(tmp_path_factory.mktemp("mariadb")).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "mariadb"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url_of(tmp_path)
    server: MariaDBServer = request.getfixturevalue("mariadb_server")
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return sqlite_url_of(tmp_path)


@pytest.fixture
def mariadb_url(mariadb_server: MariaDBServer) -> str:
    return mariadb_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def make_settings(redis_server: RedisServer, sqlite_url: str) -> Callable[..., Settings]:
    prefix = f"t{uuid.uuid4().hex[:8]}"

    def make(**overrides: Any) -> Settings:
        # Rate limiting off unless a test asks for it: tests send thousands of requests with one key, and
        # the default tiers (10/s per client) would refuse them (tests/*/test_ratelimit* turn it on).
        # Drain delay 1 s (TEST_DRAIN_DELAY) unless a test asks for another.
        values: dict[str, Any] = {"redis_url": redis_server.url, "database_url": sqlite_url, "key_prefix": prefix,
                                  "admin_token": "test-admin-token", "rate_limit_enabled": False,
                                  "drain_delay": float(TEST_DRAIN_DELAY)}
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def stack_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Stack]]:
    """Start the whole stack (3 API nodes behind nginx by default); everything is stopped afterwards.

    The processes' prefixed logs go to test-artifacts/<test name>.log.
    """
    stacks: list[Stack] = []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = sink = FileSink(ARTIFACTS / f"{request.node.name.replace('/', '_')}.log")

    def make(**kwargs: Any) -> Stack:
        kwargs.setdefault("port", 0)
        kwargs.setdefault("db", "sqlite")
        # Rate limiting off unless the test sets FAULTLINE_RATE_LIMIT_ENABLED in env (see make_settings).
        kwargs["env"] = {"FAULTLINE_RATE_LIMIT_ENABLED": "false", "FAULTLINE_DRAIN_DELAY": STACK_DRAIN_DELAY,
                         **kwargs.get("env", {})}
        cfg = StackConfig(base_dir=tmp_path / f"stack{len(stacks)}", sink=sink, **kwargs)
        stack = Stack(cfg)
        stacks.append(stack)
        stack.start()
        return stack

    yield make
    for stack in stacks:
        stack.stop()
    log.close()


@contextlib.contextmanager
def logged_stack(base_dir: Path, log_name: str, keep: list[str] | None = None, **config: Any) -> Iterator[Stack]:
    """A started stack whose prefixed logs go to test-artifacts/<log_name>.log (and to `keep`, if given);
    stopped on exit (for module-scoped stacks shared by several tests)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    sink = FileSink(ARTIFACTS / f"{log_name}.log", keep=keep)
    config["env"] = {"FAULTLINE_DRAIN_DELAY": STACK_DRAIN_DELAY, **config.get("env", {})}
    try:
        stack = Stack(StackConfig(base_dir=base_dir, port=0, sink=sink, **config))
        try:
            stack.start()
            yield stack
        finally:
            stack.stop()
    finally:
        sink.close()
