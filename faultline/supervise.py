"""One supervision round over a Stack, the orderly stop of all of it, and the start-up check that the edge
really serves.

Servers (Redis, MariaDB, nginx) come back on the same port and data directory, so clients reconnect to
the address they know and Redis replays its AOF (nothing acknowledged is lost to a SIGKILL: Redis writes
the AOF before it replies). nginx is re-rendered with the current node ports. Restarts back off
(faultline/procs.py Backoff); a failed restart is retried at the next due round, never raised.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

from faultline.liveness import SERVER_MISSES, Liveness
from faultline.procs import LogSink
from faultline.services import Supervised

if TYPE_CHECKING:
    from faultline.stack import Stack


def _hung(server: Supervised, name: str, sink: LogSink) -> bool:
    """Alive but silent for SERVER_MISSES pings in a row (SIGSTOPped, deadlocked, swapped out): SIGKILL it,
    so this round restarts it like a server that died (Redis replays its AOF, InnoDB recovers)."""
    if server.liveness is None:
        ping = server.ping()
        if ping is None:
            return False
        server.liveness = Liveness(ping, misses=SERVER_MISSES)
    if not (server.liveness.due() and server.liveness.probe(server.started_at)):
        return False
    sink(f"{name:<12}| missed {server.liveness.misses} pings in a row: hung; SIGKILL")
    server.reap()
    return True


def _server(server: Supervised, name: str, sink: LogSink) -> bool:
    if server.alive() and not _hung(server, name, sink):
        return False
    if server.backoff.due <= server.started_at:  # first round that sees this death
        code = server.proc.process.returncode if server.proc and server.proc.process else None
        delay = server.backoff.failed(time.monotonic() - server.started_at)
        sink(f"{name:<12}| exited with {code}; restarting in {delay:.1f}s")
    if not server.backoff.ready():
        return False
    try:
        server.restart()
    except Exception as exc:  # port still held, slow recovery...: try again after the next backoff step
        server.started_at = time.monotonic()
        delay = server.backoff.failed(0.0)
        sink(f"{name:<12}| restart failed ({exc}); next try in {delay:.1f}s")
        return False
    sink(f"{name:<12}| restarted (restart #{server.restarts})")
    return True


def run_round(stack: Stack) -> list[str]:
    restarted: list[str] = []
    sink = stack.cfg.sink
    for name, server in stack.servers():
        if _server(server, name, sink):
            restarted.append(name)
    for child in stack.children():
        if child.check():
            restarted.append(child.name)
    if stack.nginx is not None:
        stack.nginx.upstreams = [stack.node_ports[n.name] for n in stack.nodes]  # rendered at a restart
        if _server(stack.nginx, "nginx", sink):
            restarted.append("nginx")
    return restarted


def _call(url: str, headers: dict[str, str], body: bytes | None = None) -> int:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def check_through_edge(url: str, admin_token: str, ingest_key: str, cancel: threading.Event,
                       timeout: float = 60.0) -> None:
    """Return once real requests through nginx work: readiness, an admin read, and the ingest key
    (GET /jobs/<unknown id> with the key: 401 would mean the key does not work, 404 that it does).
    Raises if the key is refused, or if the edge does not serve within `timeout`."""
    deadline = time.monotonic() + timeout
    last: tuple[int, int, int] = (0, 0, 0)
    while time.monotonic() < deadline and not cancel.is_set():
        ready = _call(f"{url}/health/ready", {})
        admin = _call(f"{url}/errors?limit=1", {"Authorization": f"Bearer {admin_token}"})
        # the key, read-only: an unknown event id of this key's project answers 404 (401: the key is refused)
        ingest = _call(f"{url}/jobs/{'0' * 32}", {"X-Faultline-Key": ingest_key})
        last = (ready, admin, ingest)
        if ingest == 401:
            raise RuntimeError("the ingest key is refused through nginx (401): not starting with a key that "
                               "does not work")
        if ready == 200 and admin == 200 and 200 <= ingest < 500:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not serve within {timeout:.0f}s (ready, admin read, ingest) = {last}")


def stop_all(stack: Stack) -> None:
    """Stop everything within shutdown_timeout (+ a small margin): the edge first (no new requests), then
    API nodes, workers and schedulers in parallel (they finish and flush), then the stores."""
    stack.cancel.set()
    with stack.lock:
        if stack.nginx:
            stack.nginx.stop()
        children = [*stack.retiring, *stack.children()]
        for child in children:
            child.terminate()
        deadline = time.monotonic() + (stack.settings().shutdown_timeout + 2 if stack.has_redis else 5)
        for child in children:
            if child.proc is not None:
                try:
                    child.proc.wait(max(0.0, deadline - time.monotonic()))
                except Exception:
                    child.kill_group()
        stack.stop_stores()
