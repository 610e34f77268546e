"""Child processes with prefixed logs, restarted when they die (like a supervisor, or Kubernetes).

Restarts back off exponentially (capped) so a child that dies at once does not spin the machine, and the
backoff resets once a child has stayed up for a stable period. A child may also have a liveness ping
(faultline/liveness.py): a process that is alive but hung misses several in a row and is SIGKILLed, then
restarted like one that died (uvicorn's and Kubernetes' supervisors do the same).
"""

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

from faultline.liveness import Liveness

LogSink = Callable[[str], None]


def stdout_sink(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class FileSink:
    """A LogSink into a file, flushed line by line (a test that fails or a harness that is killed keeps
    every line); with `keep`, the lines are also appended to that list for assertions."""

    def __init__(self, path: str | os.PathLike[str], mode: str = "w", keep: list[str] | None = None) -> None:
        self.file = open(path, mode)
        self.keep = keep

    def __call__(self, line: str) -> None:
        if self.keep is not None:
            self.keep.append(line)
        self.file.write(line + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


@dataclass
class Backoff:
    """Delay before the next restart: base * 2^(failures-1), capped; forgotten after `stable` seconds up."""

    base: float = 0.2
    cap: float = 10.0
    stable: float = 30.0
    failures: int = 0
    due: float = 0.0  # monotonic time before which no restart is attempted

    def failed(self, up_for: float) -> float:
        if up_for >= self.stable:
            self.failures = 0
        self.failures += 1
        delay = 0.0 if self.failures == 1 else min(self.cap, self.base * 2 ** (self.failures - 2))
        self.due = time.monotonic() + delay
        return delay

    def ready(self) -> bool:
        return time.monotonic() >= self.due


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
    backoff: Backoff = field(default_factory=Backoff)
    liveness: Liveness | None = None
    hung_kills: int = 0

    def start(self) -> Child:
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.started_at = time.monotonic()
        if self.liveness is not None:
            self.liveness.reset()
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

    def terminate(self) -> None:
        """SIGTERM, and never restart it again (the first half of stop(), for callers that wait themselves)."""
        self.restart = False
        self.signal(signal.SIGTERM)

    def kill_group(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, SIGKILL the whole process group if it will not go."""
        if self.proc is None:
            return None
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
        return self.proc.returncode

    def check(self) -> bool:
        """One supervision round, never blocking for long: SIGKILL if hung, restart if dead and the backoff
        allows it. Returns True if a restart happened."""
        if self.proc is None or not self.restart:
            return False
        if self.proc.poll() is None:
            if self.liveness is not None and self.liveness.due() and self.liveness.probe(self.started_at):
                self.sink(f"{self.name:<12}| missed {self.liveness.misses} liveness pings; SIGKILL")
                self.hung_kills += 1
                self.kill_group()
            else:
                return False
        if self.backoff.due <= self.started_at:  # first look at this death: note it, schedule the restart
            self.exit_codes.append(self.proc.returncode)
            delay = self.backoff.failed(time.monotonic() - self.started_at)
            self.sink(f"{self.name:<12}| exited with {self.proc.returncode}; restarting in {delay:.1f}s")
        if not self.backoff.ready():
            return False
        self.restarts += 1
        self.start()
        return True
