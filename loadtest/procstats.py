"""CPU and memory of every process of a running target (our stack, the floor or the baseline).

Names are stable across runs ("api-1", "api-1/w1", "redis", ...) so reports can line them up.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from faultline.procs import Child
from loadtest import cmdstats, targets


def _with_children(name: str, pid: int | None) -> dict[str, psutil.Process]:
    if pid is None:
        return {}
    try:
        root = psutil.Process(pid)
        found = {name: root}
        for i, kid in enumerate(root.children(recursive=True), 1):
            found[f"{name}/w{i}"] = kid
        return found
    except psutil.NoSuchProcess:
        return {}


def _executor_pid(executor: Any) -> int | None:
    proc = getattr(getattr(executor, "proc", None), "process", None)
    return proc.pid if proc is not None else None


def target_processes(target: Any) -> dict[str, psutil.Process]:
    """Processes of a faultline Stack or a loadtest Fleet (duck-typed on their attributes)."""
    found: dict[str, psutil.Process] = {}
    kids = getattr(target, "children", [])
    children: list[Child] = kids() if callable(kids) else list(kids)  # Stack: method; Fleet: list
    for child in children:
        found.update(_with_children(child.name, child.pid))
    for attr in ("redis", "mariadb", "nginx"):
        server = getattr(target, attr, None)
        if server is not None:
            found.update(_with_children(attr, _executor_pid(server)))
    return found


@dataclass
class CpuMeter:
    """CPU seconds each process used between start() and stop(), as cores (1.0 = one full core)."""

    procs: dict[str, psutil.Process]
    before: dict[str, float] = field(default_factory=dict)
    cores: dict[str, float] = field(default_factory=dict)
    _t0: float = 0.0

    def start(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self.before = {n: _cpu(p) for n, p in self.procs.items()}
        return self

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds each process used since start(), read now (a meter can be read again after stop())."""
        return {n: _cpu(p) - self.before[n] for n, p in self.procs.items()}

    def stop(self) -> dict[str, float]:
        wall = max(1e-6, time.monotonic() - self._t0)
        self.cores = {n: (_cpu(p) - self.before[n]) / wall for n, p in self.procs.items()}
        return self.cores


def _cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return float(t.user + t.system)
    except psutil.NoSuchProcess:
        return 0.0


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    """Cumulative CPU seconds (user + system) of each process still running, e.g. to compare two spans."""
    out: dict[str, float] = {}
    for name, p in procs.items():
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        out[name] = float(t.user + t.system)
    return out


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores, every process, ours or not), since boot: beside
    the per-process figures it shows whether something else took the cores during a run."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def rss_bytes(procs: dict[str, psutil.Process]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, p in procs.items():
        try:
            out[name] = int(p.memory_info().rss)
        except psutil.NoSuchProcess:
            continue
    return out


def grouped_cores(cores: dict[str, float]) -> dict[str, float]:
    """api-1/w1 -> api, worker-4 -> worker, redis -> redis: what each role costs in total."""
    groups: dict[str, float] = {}
    for name, value in cores.items():
        role = name.split("/")[0].rsplit("-", 1)[0]
        groups[role] = groups.get(role, 0.0) + value
    return groups


def sample(target: Any, locust_pid: int | None = None) -> dict[str, Any]:
    procs = target_processes(target)
    if locust_pid is not None:  # the load generator shares the cores: its CPU is part of where time goes
        with contextlib.suppress(psutil.NoSuchProcess):
            procs["locust"] = psutil.Process(locust_pid)
    point: dict[str, Any] = {"t": time.monotonic(), "rss": rss_bytes(procs), "cpu": cpu_seconds(procs),
                             "machine_busy_s": machine_busy_seconds()}
    if hasattr(target, "settings"):
        with contextlib.suppress(Exception):  # where Redis's time goes, per command
            point["redis_s"] = {name: usec / 1e6 for name, (_, usec) in (cmdstats.snapshot(target) or {}).items()}
        with contextlib.suppress(Exception):
            point["redis_bytes"] = targets.redis_memory(target)
            point["queue"] = targets.queue_depth(target)
    return point
