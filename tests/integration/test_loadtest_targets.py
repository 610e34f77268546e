"""The things `make bench` and `make loadtest` measure, run for real but briefly.

- The naive baseline against real MariaDB: SELECT then UPDATE/INSERT in the request, counts when calls
  do not overlap, 422 on bad input.
- wrk through nginx to the bare-202 floor on 3 gunicorn nodes: the result line is parsed, every request
  is a 202, and the generator's own CPU is measured.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from faultline.procs import FileSink
from loadtest.baseline.app import create, total_count
from loadtest.fleet import Fleet
from loadtest.procstats import CpuMeter, target_processes
from loadtest.wrkload import run_wrk as run_paced
from loadtest.wrkload import wrk_argv
from loadtest.wrkrun import run_wrk


async def test_baseline_counts_sequential_events_and_rejects_bad_input(mariadb_url: str) -> None:
    app = create(mariadb_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://baseline") as client:
            for i in range(5):
                r = await client.post("/errors/log", json={"message": "db down", "fingerprint": "g1",
                                                           "event_id": f"{i:032x}"})
                assert r.status_code == 201, r.text
            other = await client.post("/errors/log", json={"message": "other"})
            assert other.status_code == 201
            assert other.json()["fingerprint"] != r.json()["fingerprint"]
            bad = await client.post("/errors/log", json={"level": "error"})
            assert bad.status_code == 422
        assert await total_count(app.state.engine) == 6


@pytest.fixture(scope="module")
def floor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("floor")
    log = sink = FileSink(base / "fleet.log")

    fleet = Fleet(base, "loadtest.floor.app:create()", nodes=3, sink=sink)
    try:
        yield fleet.start()
    finally:
        fleet.stop()
        log.close()


def test_wrk_through_nginx_to_the_floor(floor: Fleet) -> None:
    meter = CpuMeter(target_processes(floor)).start()
    result = run_wrk(floor.url, seconds=1, connections=8)
    cores = meter.stop()
    assert result.ok > 50 and result.ok == result.requests
    assert result.rejected_429 == result.errors_5xx == result.conn_errors == 0
    assert 0 < result.p50_ms <= result.p99_ms <= result.p999_ms
    assert result.cpu_seconds > 0  # wait4() rusage of wrk itself
    assert {"nginx", "node-1", "node-2", "node-3"} <= {name.split("/")[0] for name in cores}
    assert sum(cores.values()) > 0


def test_fleet_nodes_all_serve_and_nginx_spreads_over_them(floor: Fleet) -> None:
    for port in floor.ports:
        assert httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5).status_code == 200
    assert floor.nginx is not None
    log = Path(floor.nginx.prefix, "access.log")
    for _ in range(30):
        httpx.post(f"{floor.url}/errors/log", json={"message": "x"}, timeout=5)
    time.sleep(1.5)  # nginx flushes its buffered access log every second
    used = {part for part in log.read_text().split() if part.startswith("up=")}
    assert len(used) >= 2  # least_conn with keepalive still reaches more than one node


def test_wrk_paced_and_closed_loop_schedules(floor: Fleet, tmp_path: Path) -> None:
    """loadtest/wrk/paced.lua: an open rate sends about rate x seconds whatever the connections; a closed
    loop of N users pausing 1 s sends about N per second (each user's first request spread over 1 s)."""
    paced, _, _ = run_paced(wrk_argv(floor.url, "", "paced", 100, 3), tmp_path / "paced.txt")
    assert 200 <= paced.requests <= 330 and paced.ok == paced.requests  # 300 on time; CI may slip some
    closed, _, lost = run_paced(wrk_argv(floor.url, "", "soak", 20, 3), tmp_path / "closed.txt")
    assert 30 <= closed.requests <= 70 and closed.ok == closed.requests  # 20 users x ~3 s: ~60
    assert 0 <= lost <= 20  # at most one request per user in flight when wrk stopped
    # open rate with many idle connections vs. wrk's own closed loop of 8 connections: orders apart
    unpaced = run_wrk(floor.url, seconds=1, connections=8)
    assert unpaced.requests > 2 * paced.requests
