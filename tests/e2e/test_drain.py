"""One API node goes away under steady load (100 clients through nginx, 3 nodes, 2 workers, a scheduler,
Redis, MariaDB):

- SIGTERM: the node logs every phase of its drain with its duration, exits 0 inside
  FAULTLINE_SHUTDOWN_TIMEOUT, and no client sees an error.
- SIGKILL (a crash: no drain at all): nginx routes around the dead node; the client error count is printed
  (the honest figure for an unclean crash), and no accepted event is lost or counted twice.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator

import pytest

from faultline.stack import Stack
from tests.e2e.stack_checks import check_exactly_once, module_stack, report
from tests.e2e.steady_load import SteadyLoad

pytestmark = [pytest.mark.e2e, pytest.mark.mariadb]
PHASES = ("drain delay", "stop accepting", "reconnect clients", "finish in-flight", "flush", "close pools")
PHASE_LINE = re.compile(r"shutdown phase (.+?)\s+took ([0-9.]+)s \(since SIGTERM ([0-9.]+)s\)")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, list[str]]]:
    base = tmp_path_factory.mktemp("drain")
    with module_stack(base, "test_drain", nodes=3, workers=2, db="mariadb") as pair:
        yield pair


def test_sigterm_under_load_drains_in_logged_phases_and_exits_0(stack: tuple[Stack, list[str]]) -> None:
    s, lines = stack
    node = s.nodes[0]
    with SteadyLoad(s.url, s.ingest_key, clients=100) as load:
        load.wait_requests(500)
        sent = time.monotonic()
        node.signal(signal.SIGTERM)
        assert node.proc is not None
        code = node.proc.wait(timeout=60)
        took = time.monotonic() - sent
        load.wait_requests(500)  # the other two nodes carry on
    stats = load.stats
    s.nodes.remove(node)
    phases = [m.groups() for line in lines if line.startswith(node.name) and (m := PHASE_LINE.search(line))]
    report(f"\nSIGTERM {node.name}: exit {code} after {took:.2f}s; phases: "
          + ", ".join(f"{name.strip()} {float(d):.3f}s" for name, d, _ in phases))
    report(f"clients: {stats.summary()}")
    assert code == 0
    assert took < s.settings().shutdown_timeout
    assert [p[0].strip() for p in phases] == list(PHASES)
    assert float(phases[0][1]) >= s.settings().drain_delay * 0.95  # really kept serving that long
    assert stats.bad_statuses == 0 and stats.failed == 0, stats.unexpected
    assert sum(stats.transport_errors.values()) == 0  # nginx hid the node's departure completely
    report(check_exactly_once(s, load))


def test_sigkill_under_load_loses_no_accepted_event(stack: tuple[Stack, list[str]]) -> None:
    s, _ = stack
    node = s.nodes[0]
    assert node.proc is not None
    node.restart = False
    with SteadyLoad(s.url, s.ingest_key, clients=100) as load:
        load.wait_requests(500)
        os.killpg(node.proc.pid, signal.SIGKILL)  # gunicorn master and its worker, like an OOM kill
        node.proc.wait(timeout=10)
        load.wait_requests(1000)
    stats = load.stats
    s.nodes.remove(node)
    errors = stats.bad_statuses + sum(stats.transport_errors.values())
    report(f"\nSIGKILL {node.name}: client-visible errors={errors} (statuses other than 202/429: "
          f"{stats.bad_statuses}, transport: {dict(stats.transport_errors)}), events that failed every "
          f"re-send: {stats.failed}")
    report(f"clients: {stats.summary()}")
    report(check_exactly_once(s, load))
