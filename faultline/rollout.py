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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import redis

from core.keys import Keys
from core.redisurl import make_sync_redis
from faultline.procs import Child
from faultline.stack import Cancelled, Stack


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
    client = make_sync_redis(stack.redis_url, timeout=2)
    key = Keys.from_settings(stack.settings()).heartbeat(role, name)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            stack.raise_if_cancelled()
            with contextlib.suppress(redis.RedisError):
                if client.exists(key):
                    return
            time.sleep(0.2)
    finally:
        client.close()
    raise TimeoutError(f"{role} {name}: no heartbeat after {timeout}s")


def _retire(stack: Stack, old: Child) -> int | None:
    """SIGTERM `old` and wait for it to drain and exit, giving up at once if the stack is stopping
    (stop() then waits for it with everything else, within the shutdown timeout)."""
    assert old.proc is not None
    with stack.lock:
        stack.retiring.append(old)
    old.terminate()
    deadline = time.monotonic() + _stop_timeout(stack)
    while old.proc.poll() is None and time.monotonic() < deadline:
        stack.raise_if_cancelled()
        time.sleep(0.1)
    if old.proc.poll() is None:
        old.kill_group()
    with stack.lock:
        stack.retiring.remove(old)
    return old.proc.returncode


def _wait_ready(stack: Stack, port: int) -> None:
    try:
        stack.wait_ready(port)
    except InterruptedError:
        raise Cancelled("the stack is stopping") from None


def replace_node(stack: Stack, old: Child, log: Callable[[str], None]) -> Step:
    assert stack.nginx is not None
    started = time.monotonic()
    log(f"rollout: starting a replacement for {old.name}")
    new = stack.start_node()
    _wait_ready(stack, stack.node_ports[new.name])
    ready_s = time.monotonic() - started
    stack.detach(old)
    log(f"rollout: {new.name} ready in {ready_s:.2f}s and in nginx; draining {old.name}")
    stopping = time.monotonic()
    code = _retire(stack, old)
    stack.forget(old)
    step = Step("api", old.name, new.name, ready_s, time.monotonic() - stopping, code)
    log(f"rollout: {old.name} exited {code} after {step.stop_s:.2f}s")
    return step


def replace_worker(stack: Stack, old: Child, log: Callable[[str], None]) -> Step:
    started = time.monotonic()
    log(f"rollout: starting a replacement for {old.name}")
    new = stack.start_worker()
    _wait_heartbeat(stack, "worker", new.name)
    ready_s = time.monotonic() - started
    stopping = time.monotonic()
    stack.detach(old)
    code = _retire(stack, old)
    step = Step("worker", old.name, new.name, ready_s, time.monotonic() - stopping, code)
    log(f"rollout: {new.name} beating after {ready_s:.2f}s; {old.name} exited {code} after {step.stop_s:.2f}s")
    return step


def restart_scheduler(stack: Stack, child: Child, log: Callable[[str], None]) -> Step:
    log(f"rollout: restarting {child.name}")
    stopping = time.monotonic()
    stack.detach(child)
    code = _retire(stack, child)
    stop_s = time.monotonic() - stopping
    started = time.monotonic()
    stack.restart_scheduler(child)
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
    stack.write_targets()
    log(f"rollout: done in {result.seconds:.2f}s, {len(result.steps)} steps, "
        f"exit codes {[s.exit_code for s in result.steps]}")
    return result
