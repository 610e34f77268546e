"""Child processes with prefixed logs, restarted when they die (like a supervisor, or Kubernetes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

LogSink = Callable[[str], None]


def stdout_sink(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    sink: LogSink = stdout_sink
    restart: bool = True
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    exit_codes: list[int] = field(default_factory=list)

    def start(self) -> Child:
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.started_at = time.monotonic()
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()
        return self

    def _pump(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        width = 12
        for raw in iter(stream.readline, b""):
            self.sink(f"{self.name:<{width}}| {raw.decode(errors='replace').rstrip()}")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, SIGKILL the whole process group if it will not go."""
        if self.proc is None:
            return None
        self.restart = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def check(self) -> bool:
        """Restart if it died on its own. Returns True if a restart happened."""
        if self.proc is None or self.proc.poll() is None or not self.restart:
            return False
        self.exit_codes.append(self.proc.returncode)
        self.sink(f"{self.name:<12}| exited with {self.proc.returncode}; restarting")
        self.restarts += 1
        time.sleep(min(5.0, 0.2 * 2 ** min(self.restarts, 5)) if time.monotonic() - self.started_at < 5 else 0)
        self.start()
        return True
