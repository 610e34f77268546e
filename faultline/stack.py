"""The local stack: Redis, MariaDB or SQLite, N API nodes, nginx, workers and a scheduler.

`faultline up` runs it in the foreground; the e2e tests and the benchmarks start the very same thing.
Every process it starts is supervised (faultline/supervise.py): servers come back on the same port and
data directory, Python children with restart backoff, hung ones killed after missed pings (faultline/liveness.py).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from core import access
from core.keys import Keys
from core.settings import Settings
from faultline import promtargets, supervise
from faultline.bootstrap import ensure_default_project
from faultline.liveness import Liveness, heartbeat_fresh, http_ok
from faultline.nginx import NginxServer
from faultline.procs import Child, LogSink, stdout_sink
from faultline.services import free_port, wait_http_ok
from faultline.stores import Stores


class Cancelled(Exception):
    """The stack is stopping (SIGTERM/SIGINT): whatever long step was running gives up."""


@dataclass
class StackConfig:
    base_dir: Path
    nodes: int = 3
    port: int = 8080
    workers: int = 2
    schedulers: int = 1
    db: str = "sqlite"  # sqlite | mariadb | galera (3 nodes, faultline/galera.py) | a SQLAlchemy URL
    node_workers: int = 1  # uvicorn processes per API node
    env: dict[str, str] = field(default_factory=dict)
    admin_token: str = ""
    ingest_key: str = ""
    sink: LogSink = stdout_sink
    # Generated passwords for the stack's own Redis and MariaDB (`faultline up` keeps them in
    # credentials.env); empty = no password (the test fixtures' default).
    redis_password: str = ""
    db_password: str = ""
    redis: str = "single"  # single | sentinel | cluster (faultline/redis_topology.py, redis_sentinel.py)


class Stack(Stores):
    def __init__(self, config: StackConfig) -> None:
        super().__init__(config, config.base_dir)
        self.cfg = config
        self.base = config.base_dir
        self.nginx: NginxServer | None = None
        self.nodes: list[Child] = []
        self.node_ports: dict[str, int] = {}
        self.workers: list[Child] = []
        self.schedulers: list[Child] = []
        self.retiring: list[Child] = []  # replaced by a rollout, still draining: stop() waits for them too
        self.metrics_ports: dict[str, int] = {}  # worker/scheduler name -> its /metrics port (Prometheus)
        self._serial = 0
        self.admin_token = config.admin_token or secrets.token_urlsafe(24)
        self.ingest_key = config.ingest_key or access.new_ingest_key()
        # supervise_once() may run on the main loop and on a harness's background thread at once.
        self.lock = threading.RLock()
        self.cancel = threading.Event()  # set by stop requests: long waits (rollout steps) give up

    # --- start / stop -------------------------------------------------------------------------------
    def start(self) -> Stack:
        self.base.mkdir(parents=True, exist_ok=True)
        self.start_stores()
        settings = self.settings()
        asyncio.run(ensure_default_project(settings, self.ingest_key))
        for _ in range(self.cfg.nodes):
            self.start_node()
        for _ in range(self.cfg.workers):
            self.start_worker()
        for i in range(self.cfg.schedulers):
            self.schedulers.append(self._metered_child(f"scheduler-{i + 1}", ["scheduler"]).start())
        # nginx only once every node is ready: a request to a booting node would mark it failed for
        # fail_timeout, and with all of them marked nginx answers "no live upstreams" for seconds.
        for node in self.nodes:
            self.wait_ready(self.node_ports[node.name])
        self.nginx = NginxServer(self.base / "nginx", [self.node_ports[n.name] for n in self.nodes],
                                 port=self.cfg.port or free_port(),
                                 max_body_bytes=settings.max_body_bytes).start()
        supervise.check_through_edge(self.nginx.url, self.admin_token, self.ingest_key, self.cancel)
        self.write_targets()
        return self

    def settings(self) -> Settings:
        return Settings.from_env_map({k: v for k, v in self.env().items() if k != "FAULTLINE_NODE_NAME"})

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTLINE_")}
        env.update({
            "FAULTLINE_REDIS_URL": self.redis_url,
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
                            PROMETHEUS_MULTIPROC_DIR=str(prom))
        # /health/live answers from the event loop: a stopped or deadlocked node misses it.
        child.liveness = Liveness(http_ok(f"http://127.0.0.1:{port}/health/live"))
        child.start()
        with self.lock:
            self.nodes.append(child)
            self.node_ports[name] = port
        return child

    def _metered_child(self, name: str, args: list[str]) -> Child:
        """A worker or a scheduler: /metrics on a side port, liveness by the freshness of its heartbeat."""
        port = self.metrics_ports[name] = free_port()
        child = self._child(name, args, FAULTLINE_METRICS_PORT=str(port))
        s = self.settings()
        child.liveness = Liveness(heartbeat_fresh(s.redis_url, Keys.from_settings(s).heartbeat(args[0], name)))
        return child

    def start_worker(self) -> Child:
        self._serial += 1
        child = self._metered_child(f"worker-{self._serial}", ["worker"]).start()
        with self.lock:
            self.workers.append(child)
        return child

    def wait_ready(self, port: int, timeout: float = 60.0) -> None:
        wait_http_ok(f"http://127.0.0.1:{port}/health/ready", timeout, cancel=self.cancel)

    def children(self) -> list[Child]:
        return [*self.nodes, *self.workers, *self.schedulers]

    def write_targets(self) -> None:
        promtargets.write(self.base / "prometheus-targets", self.node_ports,
                          {c.name: self.metrics_ports[c.name] for c in [*self.workers, *self.schedulers]
                           if c.name in self.metrics_ports})

    def detach(self, child: Child) -> None:
        """Take a child out of the stack (and out of nginx, if a node) before it is retired or restarted."""
        with self.lock:
            for group in (self.nodes, self.workers, self.schedulers):
                if child in group:
                    group.remove(child)
            if self.nginx is not None and child.name in self.node_ports:
                self.nginx.set_upstreams([self.node_ports[n.name] for n in self.nodes])
        self.write_targets()

    def forget(self, child: Child) -> None:  # a retired node's port is free again
        with self.lock:
            self.node_ports.pop(child.name, None)

    def restart_scheduler(self, child: Child) -> None:
        child.restart = True
        child.start()  # same name, same heartbeat key
        with self.lock:
            self.schedulers.append(child)

    def supervise_once(self) -> list[str]:
        """One supervision round over every process; safe to call from any thread, never blocks long.
        Returns what it restarted (names), for logs and chaos reports."""
        with self.lock:
            return supervise.run_round(self)

    def stop(self) -> None:
        supervise.stop_all(self)  # everything, within shutdown_timeout + a small margin

    def raise_if_cancelled(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("the stack is stopping")

    @property
    def url(self) -> str:
        assert self.nginx is not None
        return self.nginx.url
