"""Throwaway servers on free ports (mirakuru waits for each to listen): what the supervisor needs of one
(Supervised), redis-server here; mariadbd in faultline/mariadb.py, nginx in faultline/nginx.py.

Used by `faultline up`, by the test fixtures and by the benchmarks alike; none of them ever touches a
server the user runs (private ports, private data directories).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mirakuru import TCPExecutor

from faultline.liveness import Liveness, Ping, tcp_answers
from faultline.procs import Backoff

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http_ok(url: str, timeout: float = 60.0, cancel: threading.Event | None = None) -> None:
    """Poll until `url` answers 200 (a readiness probe, say); gives up at once when `cancel` is set."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cancel is not None and cancel.is_set():
            raise InterruptedError(f"{url}: cancelled (stopping)")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def require(binary: str, package: str) -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if not path:
        raise SystemExit(f"{binary} not found: run `sudo apt-get install -y {package}` (or `make up`)")
    return path


class Supervised:
    """What the stack's supervisor needs of a server: is it alive, and bring it back on the same port."""

    proc: TCPExecutor | None
    backoff: Backoff
    started_at: float
    restarts: int
    liveness: Liveness | None = None  # made at the first supervision round (faultline/supervise.py)

    def start(self) -> Supervised:
        raise NotImplementedError

    def ping(self) -> Ping | None:
        """How the supervisor asks this server whether it is hung (faultline/liveness.py); None: never."""
        return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.running()

    def reap(self) -> None:
        """After an unplanned death: SIGKILL what is left of its process group (nginx's orphaned workers
        would keep the port), forget the process."""
        if self.proc is not None and self.proc.process is not None:
            group = self.proc.process.pid
            try:
                os.killpg(group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.process.wait()
            self.proc._clear_process()
            # SIGKILL is delivered asynchronously: until the last orphan is gone it may still hold the port,
            # and the new server would fail to bind (one wasted restart and its backoff)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    os.killpg(group, 0)
                except (ProcessLookupError, PermissionError):
                    break
                time.sleep(0.02)

    def restart(self) -> None:
        self.reap()
        if self.liveness is not None:
            self.liveness.reset()
        self.started_at = time.monotonic()
        self.restarts += 1
        self.start()


@dataclass
class RedisServer(Supervised):
    data_dir: Path
    port: int = field(default_factory=free_port)
    appendonly: bool = True
    password: str | None = None  # requirepass; None for the test fixtures' throwaway servers
    extra_args: list[str] = field(default_factory=list)  # cluster / replica options (faultline/redis_topology.py)
    proc: TCPExecutor | None = None
    backoff: Backoff = field(default_factory=Backoff)
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0

    def ping(self) -> Ping:
        return tcp_answers("127.0.0.1", self.port, b"PING\r\n")  # -NOAUTH is an answer too

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [require("redis-server", "redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
               "--dir", str(self.data_dir), "--save", "", "--daemonize", "no", "--protected-mode", "yes",
               # AOF, fsync once a second: an accepted event survives a Redis restart (at most 1 s at risk
               # on a machine crash), at ~5% of throughput (shared/notes/performance-floor.md).
               "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
               "--maxclients", "10000", "--logfile", str(self.data_dir / "redis.log"), *self.extra_args]
        if self.password:
            # In a 0600 config file, not on the command line, where `ps` would show it to every user.
            conf = self.data_dir / "auth.conf"
            fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"requirepass {self.password}\nmasterauth {self.password}\n")  # replicas log in too
            cmd.insert(1, str(conf))
        self.proc = TCPExecutor(cmd, host="127.0.0.1", port=self.port, timeout=20)
        self.proc.start()
        self._wait_loaded()
        return self

    def _wait_loaded(self, timeout: float = 120.0) -> None:
        """The port opens before a large AOF is replayed; until then every command answers LOADING."""
        import time

        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.BusyLoadingError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
