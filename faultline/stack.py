"""The local stack: Redis, MariaDB or SQLite, N API nodes, nginx, workers and a scheduler.

`faultline up` runs it in the foreground; the e2e tests and the benchmarks start the very same thing.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.db import repo
from core.db.engine import make_engine
from core.db.migrate import migrate
from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings
from faultline import promtargets
from faultline.procs import Child, LogSink, stdout_sink
from faultline.services import MariaDBServer, NginxServer, RedisServer, free_port, wait_http_ok


@dataclass
class StackConfig:
    base_dir: Path
    nodes: int = 3
    port: int = 8080
    workers: int = 2
    schedulers: int = 1
    db: str = "sqlite"  # sqlite | mariadb | a SQLAlchemy URL
    node_workers: int = 1  # uvicorn processes per API node
    env: dict[str, str] = field(default_factory=dict)
    admin_token: str = ""
    ingest_key: str = ""
    sink: LogSink = stdout_sink


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.cfg = config
        self.base = config.base_dir
        self.redis: RedisServer | None = None
        self.mariadb: MariaDBServer | None = None
        self.nginx: NginxServer | None = None
        self.database_url = ""
        self.nodes: list[Child] = []
        self.node_ports: dict[str, int] = {}
        self.workers: list[Child] = []
        self.schedulers: list[Child] = []
        self.metrics_ports: dict[str, int] = {}  # worker/scheduler name -> its /metrics port (Prometheus)
        self._serial = 0
        self.admin_token = config.admin_token or secrets.token_urlsafe(24)
        self.ingest_key = config.ingest_key or secrets.token_urlsafe(24)

    # --- start / stop -------------------------------------------------------------------------------
    def start(self) -> Stack:
        self.base.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(self.base / "redis").start()
        self.database_url = self._database()
        settings = self.settings()
        asyncio.run(self._prepare(settings))
        for _ in range(self.cfg.nodes):
            self.start_node()
        self.nginx = NginxServer(self.base / "nginx", [self.node_ports[n.name] for n in self.nodes],
                                 port=self.cfg.port or free_port(),
                                 max_body_bytes=settings.max_body_bytes).start()
        for _ in range(self.cfg.workers):
            self.start_worker()
        for i in range(self.cfg.schedulers):
            self.schedulers.append(self._metered_child(f"scheduler-{i + 1}", ["scheduler"]).start())
        for node in self.nodes:
            self.wait_ready(self.node_ports[node.name])
        promtargets.write(self.base / "prometheus-targets", self.node_ports, self.metrics_ports)
        return self

    def _database(self) -> str:
        db = self.cfg.db
        if db == "sqlite":
            return f"sqlite+aiosqlite:///{(self.base / 'faultline.db').resolve()}"
        if db == "mariadb":
            self.mariadb = MariaDBServer(self.base / "mariadb").start()
            return self.mariadb.create_database("faultline")
        return db

    async def _prepare(self, settings: Settings) -> None:
        await migrate(settings)
        engine = make_engine(settings)
        try:
            async with engine.begin() as conn:
                pid, self.ingest_key = await repo.ensure_project(conn, "default", self.ingest_key)
        finally:
            await engine.dispose()
        redis = make_redis(settings)
        await redis.hset(Keys(settings.key_prefix).projects, self.ingest_key, str(pid))
        await redis.aclose()

    def settings(self) -> Settings:
        values: dict[str, Any] = {k.removeprefix("FAULTLINE_").lower(): v for k, v in self.env().items()
                                  if k.startswith("FAULTLINE_") and k != "FAULTLINE_NODE_NAME"}
        return Settings(**values)

    def env(self, **extra: str) -> dict[str, str]:
        assert self.redis is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTLINE_")}
        env.update({
            "FAULTLINE_REDIS_URL": self.redis.url,
            "FAULTLINE_DATABASE_URL": self.database_url,
            "FAULTLINE_ADMIN_TOKEN": self.admin_token,
            "FAULTLINE_INGEST_KEY": self.ingest_key,
            "PYTHONUNBUFFERED": "1",
        })
        env.update({k: v for k, v in os.environ.items() if k.startswith("FAULTLINE_") and k not in env})
        env.update(self.cfg.env)
        env.update(extra)
        return env

    def _child(self, name: str, args: list[str], **extra: str) -> Child:
        argv = [sys.executable, "-m", "faultline", *args]
        return Child(name, argv, self.env(FAULTLINE_NODE_NAME=name, **extra), sink=self.cfg.sink)

    def start_node(self, port: int | None = None) -> Child:
        self._serial += 1
        name = f"api-{self._serial}"
        port = port or free_port()
        prom = self.base / "prometheus" / name
        shutil.rmtree(prom, ignore_errors=True)
        prom.mkdir(parents=True)
        child = self._child(name, ["api", "--port", str(port), "--workers", str(self.cfg.node_workers)],
                            PROMETHEUS_MULTIPROC_DIR=str(prom)).start()
        self.nodes.append(child)
        self.node_ports[name] = port
        return child

    def _metered_child(self, name: str, args: list[str]) -> Child:
        port = self.metrics_ports[name] = free_port()
        return self._child(name, args, FAULTLINE_METRICS_PORT=str(port))

    def start_worker(self) -> Child:
        self._serial += 1
        child = self._metered_child(f"worker-{self._serial}", ["worker"]).start()
        self.workers.append(child)
        return child

    def wait_ready(self, port: int, timeout: float = 60.0) -> None:
        wait_http_ok(f"http://127.0.0.1:{port}/health/ready", timeout)

    def children(self) -> list[Child]:
        return [*self.nodes, *self.workers, *self.schedulers]

    def supervise_once(self) -> None:
        for child in self.children():
            if child.check() and child in self.nodes:
                self.wait_ready(self.node_ports[child.name])

    def stop(self) -> None:
        # Order: the edge first (no new requests), then API nodes, workers and schedulers (they finish
        # and flush), then the stores.
        if self.nginx:
            self.nginx.stop()
        for child in self.children():
            child.signal(15)
        for child in self.children():
            child.stop(timeout=self.settings().shutdown_timeout + 5)
        if self.redis:
            self.redis.stop()
        if self.mariadb:
            self.mariadb.stop()

    @property
    def url(self) -> str:
        assert self.nginx is not None
        return self.nginx.url
