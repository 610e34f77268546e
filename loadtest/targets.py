"""Start the things we measure: our stack, the bare-202 floor, the naive baseline; all on the same shape.

Every target is 3 gunicorn + uvicorn nodes (1 worker each, as `faultline up`) behind the same nginx
template; ours adds Redis, MariaDB, 2 workers and a scheduler, the baseline adds MariaDB.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis as redis_sync

from core.keys import Keys
from core.settings import Settings
from faultline.mariadb import MariaDBServer
from faultline.procs import LogSink
from faultline.stack import Stack, StackConfig
from loadtest.fleet import Fleet


def limiter_available() -> bool:
    """Whether the tree under test has the rate limiter (its settings); without it "limiter on" is skipped."""
    return "rate_limit_enabled" in Settings.model_fields


def generous_limits() -> str:
    """FAULTLINE_RATE_LIMITS so high nothing is rejected: we measure the limiter's cost, not its refusals.

    Two tiers, as the default has (short + medium) but without the 1 h one: a sliding-window log keeps one
    sorted-set entry per request for the whole window, so a 1 h window at 1,000 req/s would hold 3.6 M
    entries for one client and turn a soak test into a test of that set's size.
    """
    return "short:1000000000/s,medium:1000000000/m"


def ours_env(limiter: bool | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"FAULTLINE_LOG_LEVEL": "warning"}
    if limiter_available() and limiter is not None:
        env["FAULTLINE_RATE_LIMIT_ENABLED"] = "true" if limiter else "false"
        if limiter:
            env["FAULTLINE_RATE_LIMITS"] = generous_limits()
            # per-project quotas and the new-group cap: checked (their cost is measured) but unlimited
            # (the load tests send one project's events over thousands of groups)
            if "project_quota_per_minute" in Settings.model_fields:
                env.update({"FAULTLINE_PROJECT_QUOTA_PER_SECOND": "0", "FAULTLINE_PROJECT_QUOTA_PER_MINUTE": "0",
                            "FAULTLINE_PROJECT_NEW_GROUPS_PER_HOUR": "0"})
    env.update(extra or {})
    return env


def start_ours(base: Path, sink: LogSink, *, limiter: bool | None = None, nodes: int = 3, db: str = "mariadb",
               env: dict[str, str] | None = None) -> Stack:
    cfg = StackConfig(base_dir=base, nodes=nodes, port=0, workers=2, schedulers=1, db=db,
                      env=ours_env(limiter, env), sink=sink)
    stack = Stack(cfg)
    try:
        return stack.start()
    except BaseException:
        stack.stop()
        raise


def start_floor(base: Path, sink: LogSink, nodes: int = 3) -> Fleet:
    fleet = Fleet(base, "loadtest.floor.app:create()", nodes=nodes, sink=sink)
    try:
        return fleet.start()
    except BaseException:
        fleet.stop()
        raise


@dataclass
class Baseline:
    """The naive app on its own MariaDB (same server settings as ours: faultline.mariadb.MariaDBServer)."""

    fleet: Fleet
    mariadb: MariaDBServer
    database_url: str

    @property
    def url(self) -> str:
        return self.fleet.url

    @property
    def children(self) -> list[Any]:
        return self.fleet.children

    @property
    def nginx(self) -> Any:
        return self.fleet.nginx

    def stop(self) -> None:
        self.fleet.stop()
        self.mariadb.stop()


def start_baseline(base: Path, sink: LogSink, nodes: int = 3) -> Baseline:
    mariadb = MariaDBServer(base / "mariadb").start()
    url = mariadb.create_database("naive")
    fleet = Fleet(base, "loadtest.baseline.app:create()", nodes=nodes, sink=sink,
                  env={"BASELINE_DATABASE_URL": url})
    try:
        fleet.start()
    except BaseException:
        fleet.stop()
        mariadb.stop()
        raise
    return Baseline(fleet, mariadb, url)


def wait_drained(stack: Stack, timeout: float = 120.0) -> float:
    """Wait until the workers have acknowledged every task; returns the seconds it took."""
    settings = stack.settings()
    keys = Keys.from_settings(settings)
    client = redis_sync.Redis.from_url(settings.redis_url)
    start = time.monotonic()
    try:
        while time.monotonic() - start < timeout:
            pipe = client.pipeline(transaction=False)
            for k in keys.streams:  # every key shard's stream and retries (a sharded case has 16 + 1)
                pipe.xlen(k.stream)
                pipe.zcard(k.retries)
            if not any(int(n) for n in pipe.execute()):
                break
            time.sleep(0.2)
        return time.monotonic() - start
    finally:
        client.close()


def queue_depth(stack: Stack) -> int:
    client = redis_sync.Redis.from_url(stack.settings().redis_url)
    try:
        return int(client.xlen(Keys.from_settings(stack.settings()).stream))
    finally:
        client.close()


def redis_memory(stack: Stack) -> int:
    client = redis_sync.Redis.from_url(stack.settings().redis_url)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()
