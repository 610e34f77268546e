"""The edge: a throwaway nginx on a free port, rendered from deploy/nginx/nginx.conf.tmpl, reloaded in place."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mirakuru import TCPExecutor

from faultline.liveness import Ping, tcp_answers
from faultline.procs import Backoff
from faultline.services import REPO, Supervised, free_port, require


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
