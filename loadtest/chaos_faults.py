"""The faults. Each breaks the running stack, waits until the fault is over, and says when it ended.

"End" is the moment the broken thing is back (Redis answering again, MariaDB accepting connections, the
killed process restarted, the last reload done, the poison event dead-lettered): recovery is measured
from there. Restarts are the supervisor's job (chaos_stack.Supervisor), never the fault's, except for a
fault that must stay down for a while (MariaDB down), which holds the supervisor for its duration.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.keys import Keys
from faultline.procs import Child, LogSink
from faultline.stack import Stack
from loadtest import chaos_stack
from loadtest.chaos_account import dead_lettered_ids
from loadtest.chaos_load import ChaosLoad


@dataclass
class Fault:
    stack: Stack
    supervisor: chaos_stack.Supervisor
    load: ChaosLoad
    log: LogSink
    quick: bool = False
    repeat: int = 0  # kills / reloads of the repeated faults; 0 = each fault's own number
    start: float = 0.0
    end: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def secs(self, full: float, quick: float) -> float:
        return quick if self.quick else full


def _wait(check: Callable[[], bool], timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return False


def _server_pid(server: Any) -> int:
    return int(server.proc.process.pid)


def _kill_child(child: Child, timeout: float = 60.0) -> bool:
    """SIGKILL the child's whole process group (a crash: no handler runs); wait for the supervisor's restart."""
    pid, restarts = child.pid, child.restarts
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    return _wait(lambda: child.restarts > restarts and child.alive() and child.pid != pid, timeout)


def redis_kill(f: Fault) -> None:
    assert f.stack.redis is not None
    f.start = time.monotonic()
    os.kill(_server_pid(f.stack.redis), signal.SIGKILL)

    def answers() -> bool:
        try:
            client = chaos_stack.redis_client(f.stack)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False

    f.info["back"] = _wait(lambda: not answers(), 5) and _wait(answers, 60, every=0.1)
    f.end = time.monotonic()


def redis_freeze(f: Fault) -> None:
    assert f.stack.redis is not None
    pid = _server_pid(f.stack.redis)
    f.start = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(f.secs(10, 5))
    finally:
        os.kill(pid, signal.SIGCONT)
    f.end = time.monotonic()


def mariadb_down(f: Fault) -> None:
    db = f.stack.mariadb
    assert db is not None
    f.supervisor.hold()  # down for the whole period: no restart before it is over
    f.start = time.monotonic()
    try:
        os.kill(_server_pid(db), signal.SIGKILL)
        time.sleep(f.secs(60, 15))
    finally:
        f.supervisor.release()
    f.info["back"] = _wait(lambda: chaos_stack.port_open(db.port), 120, every=0.2)
    f.end = time.monotonic()


def worker_kill(f: Fault) -> None:
    times = f.repeat or 5
    f.start = time.monotonic()
    restarted = 0
    for i in range(times):
        if i:
            time.sleep(f.secs(3, 1.5))
        restarted += _kill_child(f.stack.workers[i % len(f.stack.workers)])
    f.info["restarted"] = restarted
    f.end = time.monotonic()


def node_kill(f: Fault) -> None:
    node = f.stack.nodes[0]
    f.start = time.monotonic()
    f.info["restarted"] = _kill_child(node)
    port = f.stack.node_ports[node.name]
    f.info["ready"] = _wait(lambda: _ready(port), 60, every=0.1)
    f.end = time.monotonic()


def _ready(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=1) as r:
            return r.status == 200
    except Exception:
        return False


def scheduler_kill(f: Fault) -> None:
    """SIGKILL the scheduler while a count batch is in flight (renamed aside, not yet cleaned up)."""
    times = f.repeat or 3
    keys = Keys.from_settings(f.stack.settings())
    client = chaos_stack.redis_client(f.stack)
    # generous: a restarted scheduler may take tens of seconds to import and start on a loaded machine
    timeout = 10 * f.stack.settings().sync_interval + 60
    mid_sync = restarted = 0
    f.start = time.monotonic()
    try:
        for _ in range(times):
            scheduler = f.stack.schedulers[0]
            mid_sync += _freeze_mid_sync(scheduler, lambda: int(client.scard(keys.flushing_batches)), timeout)
            restarted += _kill_child(scheduler)
    finally:
        client.close()
    f.info.update(mid_sync=mid_sync, restarted=restarted)
    f.end = time.monotonic()


def _freeze_mid_sync(child: Child, in_flight: Callable[[], int], timeout: float) -> bool:
    """Leave `child` SIGSTOPped at a moment a batch of its is in flight; True if caught within `timeout`.

    A sync is over in milliseconds, shorter than this process's GIL switch interval under load, so polling
    would mostly miss it. Freezing the scheduler first makes the check exact: stop it, look, let it go on if
    it is between batches. A batch a killed predecessor left behind is waited out first (it is not ours)."""
    rng = random.Random()
    _wait(lambda: in_flight() == 0, timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert child.pid is not None
        os.kill(child.pid, signal.SIGSTOP)
        try:
            if in_flight():
                return True
        except Exception:  # Redis busy: treat as "not now"
            pass
        os.kill(child.pid, signal.SIGCONT)
        time.sleep(rng.uniform(0.0, 0.02))
    return False


def nginx_reload(f: Fault) -> None:
    times = f.repeat or 5
    assert f.stack.nginx is not None
    f.start = time.monotonic()
    for i in range(times):
        if i:
            time.sleep(f.secs(2, 1))
        f.stack.nginx.set_upstreams([f.stack.node_ports[n.name] for n in f.stack.nodes])
    f.end = time.monotonic()


POISON_SERVICE = "chaos-poison"
TRIGGER = ("CREATE TRIGGER chaos_reject BEFORE INSERT ON error_groups FOR EACH ROW "
           f"IF NEW.service = '{POISON_SERVICE}' THEN "
           "SIGNAL SQLSTATE '22001' SET MESSAGE_TEXT = 'Data too long for column service at row 1', "
           "MYSQL_ERRNO = 1406; END IF")


def db_reject(f: Fault) -> None:
    """A row the DB refuses for good (as strict mode refuses a value too long): a trigger rejects the group
    row of one event. That event must end in the dead-letter list, and no other event may suffer."""
    chaos_stack.run_sql(f.stack, TRIGGER)
    event_id = uuid.uuid4().hex
    body = f.load.body(event_id, -1, service=POISON_SERVICE)
    f.start = time.monotonic()
    f.load.post_one(body, event_id, -1)
    f.info["poison_status"] = f.load.events[event_id].statuses
    f.info["poison_event_id"] = event_id
    f.info["dead_lettered"] = _wait(
        lambda: bool(dead_lettered_ids(chaos_stack.dead_letter_records(f.stack), [event_id])), 120, every=0.5)
    f.end = time.monotonic()


FAULTS: dict[str, tuple[str, Callable[[Fault], None]]] = {
    "redis-kill": ("Redis SIGKILL, back with its AOF", redis_kill),
    "redis-freeze": ("Redis frozen (SIGSTOP)", redis_freeze),
    "mariadb-down": ("MariaDB down", mariadb_down),
    "worker-kill": ("worker SIGKILLed 5 times", worker_kill),
    "node-kill": ("API node SIGKILLed", node_kill),
    "scheduler-kill": ("scheduler SIGKILLed mid-sync x3", scheduler_kill),
    "nginx-reload": ("nginx reloaded 5 times", nginx_reload),
    "db-reject": ("DB rejects one event's row", db_reject),
}
