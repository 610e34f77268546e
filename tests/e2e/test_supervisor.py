"""The supervisor of the local stack (faultline/supervise.py) against real faults, under steady load:
Redis, MariaDB and nginx SIGKILLed come back on the same port (Redis with its AOF), ingest answers 202
again within seconds, and every accepted event is stored and counted exactly once. A hung API node
(SIGSTOP) misses its liveness probes, is SIGKILLed and restarted; so is a hung worker (stale heartbeat).
Supervision runs on a background thread, as the chaos harness drives it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.keys import Keys
from faultline.liveness import STALE_BEATS, Ping, heartbeat_fresh
from faultline.procs import Child
from faultline.stack import Stack
from tests.e2e.stack_checks import check_exactly_once, module_stack, node_get, report
from tests.e2e.steady_load import SteadyLoad

pytestmark = [pytest.mark.e2e, pytest.mark.mariadb]
RECOVERY_S = 15.0  # "within a few seconds" on a quiet machine; margin for the shared 2-core box
# Workers and schedulers beat every 0.5 s here, not 2 s (FAULTLINE_HEARTBEAT_INTERVAL): the hung worker's test
# judges staleness in beats (faultline/liveness.STALE_BEATS), so its verdict comes in a quarter of the time.
# The other tests keep the supervisor's stock staleness (10 s), only more beats inside it.
BEAT = 0.5


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base: Path = tmp_path_factory.mktemp("supervised")
    with module_stack(base, "supervisor", nodes=2, workers=1, db="mariadb",
                      env={"FAULTLINE_HEARTBEAT_INTERVAL": str(BEAT)}) as (s, _lines):
        stop = threading.Event()

        def supervise() -> None:  # what loadtest/chaos.py does: a round every few hundred ms
            while not stop.wait(0.3):
                s.supervise_once()

        thread = threading.Thread(target=supervise, daemon=True)
        thread.start()
        yield s
        stop.set()
        thread.join(10)


def answered_within(ping: Ping, seconds: float) -> Ping:
    """The same ping, counted a miss once it has not answered within `seconds` (its own timeout is 2 s).
    A SIGSTOPped process never answers, so each of its misses then costs the supervision round `seconds`
    instead of 2 s: the same 3 misses in a row, sooner. Only the hung process's ping, only in its test."""
    def quicker() -> bool | None:
        answered: list[bool | None] = []
        thread = threading.Thread(target=lambda: answered.append(ping()), daemon=True)
        thread.start()
        thread.join(seconds)
        return answered[0] if answered else False

    return quicker


def ingest(stack: Stack) -> int:
    body = json.dumps({"message": "probe after a fault", "service": f"probe-{uuid.uuid4().hex[:6]}"}).encode()
    req = urllib.request.Request(f"{stack.url}/errors/log", data=body, method="POST",
                                 headers={"X-Faultline-Key": stack.ingest_key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def first_202_after(stack: Stack, since: float) -> float:
    deadline = since + 60
    while time.monotonic() < deadline:
        if ingest(stack) == 202:
            return time.monotonic() - since
        time.sleep(0.1)
    raise AssertionError("ingest did not answer 202 within 60 s of the fault")


def server_pid(stack: Stack, name: str) -> int:
    server = {"redis": stack.redis, "mariadb": stack.mariadb, "nginx": stack.nginx}[name]
    assert server is not None and server.proc is not None and server.proc.process is not None
    return int(server.proc.process.pid)


@pytest.mark.parametrize("name", ["redis", "mariadb", "nginx"])
def test_sigkilled_server_is_restarted_and_nothing_accepted_is_lost(stack: Stack, name: str) -> None:
    server = {"redis": stack.redis, "mariadb": stack.mariadb, "nginx": stack.nginx}[name]
    assert server is not None
    port, restarts, pid = server.port, server.restarts, server_pid(stack, name)
    with SteadyLoad(stack.url, stack.ingest_key, clients=20, think=0.1) as load:
        load.wait_requests(100)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        back_in = first_202_after(stack, killed)  # (nginx's orphaned workers may serve until the restart)
        deadline = time.monotonic() + 30
        while server.restarts == restarts and time.monotonic() < deadline:
            time.sleep(0.1)
        load.wait_requests(200)
    assert server.restarts == restarts + 1 and server.port == port and server_pid(stack, name) != pid
    report(f"supervisor: {name} SIGKILLed -> ingest 202 again after {back_in:.2f}s; {load.stats.summary()}")
    assert back_in < RECOVERY_S
    report("supervisor: " + check_exactly_once(stack, load))


def stop_until_killed(child: Child, what: str, timeout: float) -> tuple[float, float]:
    """SIGSTOP a child once its liveness has seen it live (from then on every miss counts); wait until the
    supervisor SIGKILLs it as hung. Returns (when it was stopped, seconds until the kill)."""
    assert child.liveness is not None and child.proc is not None
    kills = child.hung_kills
    deadline = time.monotonic() + 60
    while not child.liveness.seen_live and time.monotonic() < deadline:
        time.sleep(0.1)
    assert child.liveness.seen_live, f"the {what} was never seen live"
    os.killpg(child.proc.pid, signal.SIGSTOP)  # the whole group: alive, answering nothing
    stopped = time.monotonic()
    while time.monotonic() < stopped + timeout and child.hung_kills == kills:
        time.sleep(0.2)
    assert child.hung_kills == kills + 1, f"the hung {what} was never killed"
    return stopped, time.monotonic() - stopped


def test_hung_api_node_is_killed_and_restarted(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    node = stack.nodes[0]
    port = stack.node_ports[node.name]
    assert node.liveness is not None
    # its /health/live probe given up after 1 s, not 2, and sent every 1 s: the same 3 misses, ~4 s sooner
    monkeypatch.setattr(node.liveness, "ping", answered_within(node.liveness.ping, 1.0))
    monkeypatch.setattr(node.liveness, "every", 1.0)
    stopped, killed_after = stop_until_killed(node, "node", 30)
    # 3 probes, each given up after 1 s, 1 s apart: ~3-6 s (~8-12 s with the production 2 s and 2 s)
    assert killed_after < 20, killed_after
    deadline = time.monotonic() + 90  # a cold boot takes 5-10 s here, more when the box is loaded
    while time.monotonic() < deadline and node_get(port, "/health/ready")[0] != 200:
        time.sleep(0.2)
    assert node_get(port, "/health/ready")[0] == 200, "the node did not come back on its port"
    report(f"supervisor: hung node SIGKILLed {killed_after:.1f}s after SIGSTOP (3 missed "
           f"probes), ready again {time.monotonic() - stopped:.1f}s after SIGSTOP")


def test_hung_worker_is_killed_and_replaced(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's liveness is its heartbeat's freshness (faultline/liveness.py): SIGSTOPped, it stops beating,
    misses its pings, is SIGKILLed and restarted, and the new process beats again."""
    worker = stack.workers[0]
    assert worker.liveness is not None and worker.proc is not None
    # Stale after the same 5 beats lost as in production (STALE_BEATS), of this module's 0.5-s beat: 2.5 s
    # instead of 10 s. Its ping is a Redis read that answers at once: asked every 0.5 s rather than 2 s, the
    # 3 misses in a row come ~1.5 s after the beat went stale instead of ~6 s; the same verdict, sooner.
    key = Keys.from_settings(stack.settings()).heartbeat("worker", worker.name)
    monkeypatch.setattr(worker.liveness, "ping", heartbeat_fresh(stack.redis_url, key, STALE_BEATS * BEAT))
    monkeypatch.setattr(worker.liveness, "every", 0.5)
    old_pid = worker.proc.pid
    stopped, killed_after = stop_until_killed(worker, "worker", 60)
    deadline = time.monotonic() + 90
    # a new process (poll() may still say "alive" while the supervisor reaps the old one), seen beating
    while time.monotonic() < deadline and not (worker.pid != old_pid and worker.alive() and worker.liveness.seen_live):
        time.sleep(0.2)
    assert worker.alive() and worker.pid != old_pid and worker.liveness.seen_live, "no fresh heartbeat after restart"
    report(f"supervisor: hung worker SIGKILLed {killed_after:.1f}s after SIGSTOP, beating again "
           f"{time.monotonic() - stopped:.1f}s after SIGSTOP")


@pytest.mark.parametrize("name", ["redis", "mariadb", "nginx"])
def test_hung_server_is_killed_restarted_and_nothing_accepted_is_lost(stack: Stack, name: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A server alive but silent (SIGSTOP on its whole process group: nginx's workers too) misses the
    supervisor's pings (faultline/liveness.py: Redis PING, MariaDB login + COM_PING, nginx a request it
    answers itself), is SIGKILLed and restarted on its port; ingest answers 202 again, nothing accepted lost."""
    server = {"redis": stack.redis, "mariadb": stack.mariadb, "nginx": stack.nginx}[name]
    assert server is not None
    deadline = time.monotonic() + 30
    while (server.liveness is None or not server.liveness.seen_live) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.liveness is not None and server.liveness.seen_live, f"{name} was never pinged live"
    monkeypatch.setattr(server.liveness, "misses", 3)  # 8 in production (SERVER_MISSES): 16-32 s
    # each ping given up after 1 s, not 2, and sent every 1 s: the same 3 misses in a row, ~3 s sooner
    monkeypatch.setattr(server.liveness, "ping", answered_within(server.liveness.ping, 1.0))
    monkeypatch.setattr(server.liveness, "every", 1.0)
    port, restarts, pid = server.port, server.restarts, server_pid(stack, name)
    with SteadyLoad(stack.url, stack.ingest_key, clients=20, think=0.1) as load:
        load.wait_requests(100)
        stopped = time.monotonic()
        os.killpg(pid, signal.SIGSTOP)
        try:
            while server.restarts == restarts and time.monotonic() < stopped + 60:
                time.sleep(0.1)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGCONT)  # never leave a stopped orphan behind a failed check
        restarted_after = time.monotonic() - stopped
        assert server.restarts == restarts + 1, f"the hung {name} was never restarted"
        back_in = first_202_after(stack, stopped)
        load.wait_requests(200)
    assert server.port == port and server_pid(stack, name) != pid
    # 3 pings, each given up after 1 s, 1 s apart (plus the rest of each supervision round), then the restart
    assert restarted_after < 30, restarted_after
    report(f"supervisor: {name} SIGSTOPped -> SIGKILLed and restarted after {restarted_after:.1f}s, ingest 202 "
           f"again after {back_in:.1f}s; {load.stats.summary()}")
    report("supervisor: " + check_exactly_once(stack, load))
