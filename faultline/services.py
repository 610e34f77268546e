"""Throwaway servers on free ports: redis-server, mariadbd, nginx (mirakuru waits for each to listen).

Used by `faultline up`, by the test fixtures and by the benchmarks alike; none of them ever touches a
server the user runs (private ports, private data directories).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mirakuru import TCPExecutor

from faultline.liveness import Liveness, Ping, mysql_answers, tcp_answers
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


@dataclass
class MariaDBServer(Supervised):
    data_dir: Path
    port: int = field(default_factory=free_port)
    # InnoDB redo log: given to the install step too, which would otherwise write its 96 MB default first
    log_file_size: str = "64M"
    proc: TCPExecutor | None = None
    backoff: Backoff = field(default_factory=Backoff)
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0

    def ping(self) -> Ping:
        return mysql_answers("127.0.0.1", self.port, "root", None)

    def url(self, database: str = "faultline", user: str = "root", password: str | None = None) -> str:
        auth = f"{user}:{password}" if password else user
        return f"mysql+asyncmy://{auth}@127.0.0.1:{self.port}/{database}?charset=utf8mb4"

    def start(self) -> MariaDBServer:
        datadir = self.data_dir / "data"
        if self.needs_install():
            datadir.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [require("mariadb-install-db", "mariadb-server"), "--no-defaults", f"--datadir={datadir}",
                 "--auth-root-authentication-method=normal", "--skip-test-db", "--user=" + self.os_user(),
                 f"--innodb-log-file-size={self.log_file_size}"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.proc = TCPExecutor(self.command(), host="127.0.0.1", port=self.port, timeout=60)
        self.proc.start()
        return self

    def needs_install(self) -> bool:
        """A fresh data directory: create the system tables first."""
        return not (self.data_dir / "data" / "mysql").exists()

    def os_user(self) -> str:
        """The OS user mariadbd runs as: whoever runs us (Galera's nodes override it)."""
        return _user()

    def command(self) -> list[str]:
        return [require("mariadbd", "mariadb-server"), "--no-defaults", f"--datadir={self.data_dir / 'data'}",
                f"--port={self.port}", "--bind-address=127.0.0.1", f"--socket={self.data_dir / 'mysqld.sock'}",
                "--user=" + self.os_user(), f"--pid-file={self.data_dir / 'mysqld.pid'}", "--skip-log-bin",
                "--max-connections=500",
                # what 500 connections and a 1,000-table cache need, within the hard limit: its default sizing
                # asks for more and prints "Could not increase number of max_open_files" at every start
                "--table-open-cache=1000",
                f"--open-files-limit={min(16384, resource.getrlimit(resource.RLIMIT_NOFILE)[1])}",
                "--innodb-buffer-pool-size=128M", f"--innodb-log-file-size={self.log_file_size}",
                f"--log-error={self.data_dir / 'error.log'}"]

    def create_database(self, name: str, password: str | None = None) -> str:
        """The database, and with `password` a `faultline` user owning it (the URL children get)."""
        self.sql(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
        if not password:
            return self.url(name)
        if not password.replace("-", "").replace("_", "").isalnum():
            raise ValueError("database password: letters, digits, - and _ only")
        self.sql(f"CREATE USER IF NOT EXISTS 'faultline'@'127.0.0.1' IDENTIFIED BY '{password}'; "
                 f"ALTER USER 'faultline'@'127.0.0.1' IDENTIFIED BY '{password}'; "
                 f"GRANT ALL PRIVILEGES ON `{name}`.* TO 'faultline'@'127.0.0.1'")
        self.lock_root()
        return self.url(name, "faultline", password)

    def sql(self, statement: str) -> str:
        """As root over the server's private unix socket (works before and after lock_root())."""
        out = subprocess.run(
            [require("mariadb", "mariadb-client"), "--no-defaults", "--protocol=socket",
             f"--socket={self.data_dir / 'mysqld.sock'}", "-uroot", "-N", "-B", "-e", statement],
            check=True, capture_output=True, text=True)
        return out.stdout

    def lock_root(self) -> None:
        """Root only through the unix socket (the unix_socket plugin: the OS user must be root), never over
        TCP: the port then takes the password-protected `faultline` user only. Skipped when not running as
        root, where socket auth would lock us out of our own server."""
        if os.getuid() != 0:
            return
        self.sql("DELETE FROM mysql.global_priv WHERE User = 'root' AND Host <> 'localhost'; "
                 "FLUSH PRIVILEGES; ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket")

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@dataclass
class NginxServer(Supervised):
    prefix: Path
    upstreams: list[int]
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    max_body_bytes: int = 1_048_576
    # Tried only when every upstream above failed for a request (nginx `backup`): lets a test choose which
    # node a request reaches first.
    backups: list[int] = field(default_factory=list)
    # How long nginx waits for a node's answer before it gives up on it (and retries on the next one).
    read_timeout: str = "30s"
    proc: TCPExecutor | None = None
    backoff: Backoff = field(default_factory=Backoff)
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0
    _temp: Path | None = None

    def ping(self) -> Ping:
        # no Host header: nginx answers 400 itself, no node involved
        return tcp_answers(self.host, self.port, b"GET / HTTP/1.1\r\n\r\n")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def temp_root(self) -> Path:
        """Where nginx writes request bodies over its 16 KB buffer. Run as root, the master's workers run as
        `nobody`, who must reach the directory: the stack's own directory may sit under a private (0700) one
        (pytest's, a home directory), so root's temp files go to a directory of their own under /tmp."""
        if self._temp is None:
            if os.geteuid() == 0:
                self._temp = Path(tempfile.mkdtemp(prefix=f"faultline-nginx-{self.port}-"))
                os.chmod(self._temp, 0o711)  # traversable, not listable
            else:
                self._temp = self.prefix
        return self._temp

    def render(self) -> Path:
        template = (REPO / "deploy" / "nginx" / "nginx.conf.tmpl").read_text()
        servers = "\n".join([f"        server 127.0.0.1:{p} max_fails=3 fail_timeout=10s;" for p in self.upstreams]
                            + [f"        server 127.0.0.1:{p} backup;" for p in self.backups])
        temp = self.temp_root()
        for name, value in {"prefix": str(self.prefix), "temp": str(temp), "servers": servers, "host": self.host,
                            "port": str(self.port), "max_body_bytes": str(self.max_body_bytes),
                            "read_timeout": self.read_timeout}.items():
            template = template.replace("{{" + name + "}}", value)
        self.prefix.mkdir(parents=True, exist_ok=True)
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (temp / sub).mkdir(exist_ok=True)
            os.chmod(temp / sub, 0o777)  # nginx workers run as `nobody` when the master is root
        conf = self.prefix / "nginx.conf"
        conf.write_text(template)
        return conf

    def start(self) -> NginxServer:
        conf = self.render()
        cmd = [require("nginx", "nginx"), "-p", str(self.prefix), "-c", str(conf), "-g", "daemon off;"]
        self.proc = TCPExecutor(cmd, host=self.host, port=self.port, timeout=20)
        self.proc.start()
        return self

    def set_upstreams(self, upstreams: list[int]) -> None:
        """Re-render and reload (SIGHUP): nginx starts new workers, old ones finish their requests."""
        self.upstreams = list(upstreams)
        conf = self.render()
        subprocess.run([require("nginx", "nginx"), "-p", str(self.prefix), "-c", str(conf), "-s", "reload"],
                       check=True, capture_output=True)

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
        if self._temp is not None and self._temp != self.prefix:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None

