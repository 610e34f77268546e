"""Throwaway servers on free ports: redis-server, mariadbd, nginx (mirakuru waits for each to listen).

Used by `faultline up`, by the test fixtures and by the benchmarks alike; none of them ever touches a
server the user runs (private ports, private data directories).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from mirakuru import TCPExecutor

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http_ok(url: str, timeout: float = 60.0) -> None:
    """Poll until `url` answers 200 (a readiness probe, say)."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
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


@dataclass
class RedisServer:
    data_dir: Path
    port: int = field(default_factory=free_port)
    appendonly: bool = True
    proc: TCPExecutor | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [require("redis-server", "redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
               "--dir", str(self.data_dir), "--save", "", "--daemonize", "no", "--protected-mode", "yes",
               # AOF, fsync once a second: an accepted event survives a Redis restart (at most 1 s at risk
               # on a machine crash), at ~5% of throughput (docs/performance-floor).
               "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
               "--maxclients", "10000", "--logfile", str(self.data_dir / "redis.log")]
        self.proc = TCPExecutor(cmd, host="127.0.0.1", port=self.port, timeout=20)
        self.proc.start()
        self._wait_loaded()
        return self

    def _wait_loaded(self, timeout: float = 120.0) -> None:
        """The port opens before a large AOF is replayed; until then every command answers LOADING."""
        import time

        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
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
class MariaDBServer:
    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: TCPExecutor | None = None

    def url(self, database: str = "faultline") -> str:
        return f"mysql+asyncmy://root@127.0.0.1:{self.port}/{database}?charset=utf8mb4"

    def start(self) -> MariaDBServer:
        mariadbd = require("mariadbd", "mariadb-server")
        datadir = self.data_dir / "data"
        if not (datadir / "mysql").exists():
            datadir.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [require("mariadb-install-db", "mariadb-server"), "--no-defaults", f"--datadir={datadir}",
                 "--auth-root-authentication-method=normal", "--skip-test-db", "--user=" + _user()],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        cmd = [mariadbd, "--no-defaults", f"--datadir={datadir}", f"--port={self.port}",
               "--bind-address=127.0.0.1", f"--socket={self.data_dir / 'mysqld.sock'}", "--user=" + _user(),
               f"--pid-file={self.data_dir / 'mysqld.pid'}", "--skip-log-bin", "--max-connections=500",
               "--innodb-buffer-pool-size=128M", "--innodb-log-file-size=64M",
               f"--log-error={self.data_dir / 'error.log'}"]
        self.proc = TCPExecutor(cmd, host="127.0.0.1", port=self.port, timeout=60)
        self.proc.start()
        return self

    def create_database(self, name: str) -> str:
        self.sql(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
        return self.url(name)

    def sql(self, statement: str) -> str:
        out = subprocess.run(
            [require("mariadb", "mariadb-client"), "--no-defaults", "-h127.0.0.1", f"-P{self.port}", "-uroot",
             "-N", "-B", "-e", statement], check=True, capture_output=True, text=True)
        return out.stdout

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@dataclass
class NginxServer:
    prefix: Path
    upstreams: list[int]
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    max_body_bytes: int = 1_048_576
    proc: TCPExecutor | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def render(self) -> Path:
        template = (REPO / "deploy" / "nginx" / "nginx.conf.tmpl").read_text()
        servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=3 fail_timeout=10s;" for p in self.upstreams)
        for name, value in {"prefix": str(self.prefix), "servers": servers, "host": self.host,
                            "port": str(self.port), "max_body_bytes": str(self.max_body_bytes)}.items():
            template = template.replace("{{" + name + "}}", value)
        self.prefix.mkdir(parents=True, exist_ok=True)
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / sub).mkdir(exist_ok=True)
            os.chmod(self.prefix / sub, 0o777)  # nginx workers run as `nobody` when the master is root
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


def template_path() -> Path:
    return Path(str(resources.files("faultline"))).parent / "deploy" / "nginx" / "nginx.conf.tmpl"
