"""N gunicorn nodes of any ASGI app behind the same nginx template as `faultline up`.

Serves the floor app and the naive baseline on the very shape our stack runs on (same worker class,
same node count, same edge), so every comparison differs only in the application code.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from faultline.nginx import NginxServer
from faultline.procs import Child, LogSink, stdout_sink
from faultline.services import free_port, wait_http_ok

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Fleet:
    base_dir: Path
    app: str  # gunicorn app spec, e.g. "loadtest.floor.app:create()"
    nodes: int = 3
    env: dict[str, str] = field(default_factory=dict)
    sink: LogSink = stdout_sink
    children: list[Child] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    nginx: NginxServer | None = None

    def start(self) -> Fleet:
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **self.env}
        for i in range(self.nodes):
            port = free_port()
            argv = [sys.executable, "-m", "gunicorn", self.app, "-c", "python:faultline.gunicorn_conf",
                    "-b", f"127.0.0.1:{port}", "-w", "1"]
            self.children.append(Child(f"node-{i + 1}", argv, env, sink=self.sink, restart=False).start())
            self.ports.append(port)
        self.nginx = NginxServer(self.base_dir / "nginx", self.ports, port=free_port()).start()
        for port in self.ports:
            wait_http_ok(f"http://127.0.0.1:{port}/health/ready")
        return self

    def stop(self) -> None:
        if self.nginx:
            self.nginx.stop()
        for child in self.children:
            child.stop(timeout=10)

    @property
    def url(self) -> str:
        assert self.nginx is not None
        return self.nginx.url


