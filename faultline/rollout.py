"""Rolling restart of the local stack, the way `kubectl rollout restart` does it with maxSurge 1 and
maxUnavailable 0: never fewer ready API nodes than before, at most one extra while a step runs.

For each API node: start the replacement, wait until its /health/ready answers 200, reload nginx with the
replacement in and the old node out, then SIGTERM the old node and wait for it to exit (its drain keeps it
serving for FAULTLINE_DRAIN_DELAY, long enough for nginx's old workers to finish with it). Then each
worker: start the replacement, wait for its heartbeat, SIGTERM the old one (it finishes its running
tasks; what it had not acked is redelivered). Schedulers are singletons in spirit (a Redis lock makes
extra replicas idle), so each is stopped and started in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import redis

from core.keys import Keys
from faultline.procs import Child
from faultline.stack import Stack


@dataclass
class Step:
    role: str
    old: str
    new: str
    ready_s: float  # replacement started -> ready (or heartbeat seen)
    stop_s: float  # SIGTERM -> old process exited
    exit_code: int | None


@dataclass
class Rollout:
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(s.exit_code == 0 for s in self.steps)

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "seconds": round(self.seconds, 3), "steps": [asdict(s) for s in self.steps]}


def _stop_timeout(stack: Stack) -> float:
    return stack.settings().shutdown_timeout + 5


def _wait_heartbeat(stack: Stack, role: str, name: str, timeout: float = 120.0) -> None:
    assert stack.redis is not None
    client = redis.Redis.from_url(stack.redis.url, socket_timeout=2)
    key = Keys(stack.settings().key_prefix).heartbeat(role, name)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if client.exists(key):
                return
            time.sleep(0.2)
    finally:
        client.close()
    raise TimeoutError(f"{role} {name}: no heartbeat after {timeout}s")


def replace_node(stack: Stack, old: Child, log: Callable[[str], None]) -> Step:
    assert stack.nginx is not None
    started = time.monotonic()
    new = stack.start_node()
    stack.wait_ready(stack.node_ports[new.name])
    ready_s = time.monotonic() - started
    stack.nodes.remove(old)
    stack.nginx.set_upstreams([stack.node_ports[n.name] for n in stack.nodes])
    log(f"rollout: {new.name} ready in {ready_s:.2f}s and in nginx; draining {old.name}")
    stopping = time.monotonic()
    code = old.stop(timeout=_stop_timeout(stack))
    stack.node_ports.pop(old.name, None)
    step = Step("api", old.name, new.name, ready_s, time.monotonic() - stopping, code)
    log(f"rollout: {old.name} exited {code} after {step.stop_s:.2f}s")
    return step


def replace_worker(stack: Stack, old: Child, log: Callable[[str], None]) -> Step:
    started = time.monotonic()
    new = stack.start_worker()
    _wait_heartbeat(stack, "worker", new.name)
    ready_s = time.monotonic() - started
    stopping = time.monotonic()
    code = old.stop(timeout=_stop_timeout(stack))
    stack.workers.remove(old)
    step = Step("worker", old.name, new.name, ready_s, time.monotonic() - stopping, code)
    log(f"rollout: {new.name} beating after {ready_s:.2f}s; {old.name} exited {code} after {step.stop_s:.2f}s")
    return step


def restart_scheduler(stack: Stack, child: Child, log: Callable[[str], None]) -> Step:
    stopping = time.monotonic()
    code = child.stop(timeout=_stop_timeout(stack))
    stop_s = time.monotonic() - stopping
    started = time.monotonic()
    child.restart = True
    child.start()
    _wait_heartbeat(stack, "scheduler", child.name)
    step = Step("scheduler", child.name, child.name, time.monotonic() - started, stop_s, code)
    log(f"rollout: {child.name} exited {code} after {stop_s:.2f}s, back in {step.ready_s:.2f}s")
    return step


def rolling_restart(stack: Stack, log: Callable[[str], None] = print) -> Rollout:
    result = Rollout()
    began = time.monotonic()
    for old in list(stack.nodes):
        result.steps.append(replace_node(stack, old, log))
    for old in list(stack.workers):
        result.steps.append(replace_worker(stack, old, log))
    for child in list(stack.schedulers):
        result.steps.append(restart_scheduler(stack, child, log))
    result.seconds = time.monotonic() - began
    log(f"rollout: done in {result.seconds:.2f}s, {len(result.steps)} steps, "
        f"exit codes {[s.exit_code for s in result.steps]}")
    return result


# --- `faultline rollout` -> SIGHUP -> `faultline up` ---------------------------------------------------
# `up` writes its pid to <data dir>/up.pid. `faultline rollout` writes a request id to rollout.request
# and sends SIGHUP; `up` runs the rollout between two supervision rounds (never concurrently with
# restarting a crashed child) and writes the outcome, tagged with the id, to rollout.json.
PID_FILE, REQUEST_FILE, RESULT_FILE = "up.pid", "rollout.request", "rollout.json"


def write_pid(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / PID_FILE).write_text(str(os.getpid()))


def remove_pid(data_dir: Path) -> None:
    (data_dir / PID_FILE).unlink(missing_ok=True)


def run_requested(stack: Stack, data_dir: Path, log: Callable[[str], None] = print) -> Rollout:
    """Called by `up` after a SIGHUP."""
    request = data_dir / REQUEST_FILE
    rid = request.read_text().strip() if request.exists() else f"sighup-{time.time():.0f}"
    try:
        result = rolling_restart(stack, log)
        outcome: dict[str, object] = {"id": rid, **result.as_dict()}
    except Exception as exc:  # report, keep the stack running: a half-done rollout still has capacity
        log(f"rollout failed: {exc}")
        result, outcome = Rollout(), {"id": rid, "ok": False, "error": str(exc)}
    (data_dir / RESULT_FILE).write_text(json.dumps(outcome, indent=2))
    return result


def request_rollout(data_dir: Path, timeout: float) -> dict[str, object]:
    """`faultline rollout`: signal the running `up` and wait for its answer."""
    pid_file = data_dir / PID_FILE
    if not pid_file.exists():
        raise SystemExit(f"no running `faultline up` ({pid_file} missing)")
    pid = int(pid_file.read_text())
    try:  # a stale pid file may name a process that is not ours any more: never signal that one
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        cmdline = ""
    if "faultline" not in cmdline or " up" not in cmdline:
        raise SystemExit(f"no running `faultline up` (pid {pid} from {pid_file} is not one)")
    rid = uuid.uuid4().hex
    (data_dir / REQUEST_FILE).write_text(rid)
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    result = data_dir / RESULT_FILE
    while time.monotonic() < deadline:
        if result.exists():
            with contextlib.suppress(ValueError):
                outcome: dict[str, object] = json.loads(result.read_text())
                if outcome.get("id") == rid:
                    return outcome
        time.sleep(0.5)
    raise SystemExit(f"rollout did not finish within {timeout:.0f}s")
