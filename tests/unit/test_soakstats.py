"""The soak report's access-log parsing and first-vs-last-third splits (loadtest/soakstats.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from loadtest.soakstats import (
    MACHINE,
    cpu_lines,
    cpu_thirds,
    drift_ok,
    parse_line,
    read_access_log,
    redis_lines,
    server_latency,
    thirds,
)

T0 = datetime(2026, 11, 29, 19, 53, 0, tzinfo=UTC).timestamp()


def line(second: int, rt: str, urt: str, request: str = "POST /errors/log HTTP/1.1", status: int = 202) -> str:
    stamp = datetime.fromtimestamp(T0 + second, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")
    return (f'127.0.0.1 [{stamp}] "{request}" {status} 91 rid=abc up=127.0.0.1:4001 '
            f"rt={rt} urt={urt}\n")


def test_parse_line_reads_time_request_and_upstream_times() -> None:
    assert parse_line(line(5, "0.012", "0.011")) == (T0 + 5, 0.012, 0.011)
    # retried on a second node: both upstream times count; nginx's own answer (no upstream): None
    assert parse_line(line(5, "0.020", "0.010, 0.004")) == pytest.approx((T0 + 5, 0.020, 0.014))
    assert parse_line(line(5, "0.000", "-", status=429)) == (T0 + 5, 0.0, None)


def test_parse_line_skips_other_requests_and_garbage() -> None:
    assert parse_line(line(5, "0.001", "0.001", request="GET /health/ready HTTP/1.1")) is None
    assert parse_line("nginx: [warn] something\n") is None
    assert parse_line("") is None


def test_thirds() -> None:
    assert thirds(0.0, 90.0) == ((0.0, 30.0), (60.0, 90.0))


def test_server_latency_compares_first_and_last_third_after_warmup(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    rows = [line(s, "0.500", "0.500") for s in range(0, 10)]  # warm-up: slow, left out
    rows += [line(s, "0.010", "0.009") for s in range(10, 40)]  # first third of 10..100
    rows += [line(s, "0.015", "0.014") for s in range(40, 70)]
    rows += [line(s, "0.020", "0.019") for s in range(70, 100)]  # last third
    rows.append(line(50, "0.001", "0.001", request="GET /health/live HTTP/1.1"))
    log.write_text("".join(rows))
    srv = server_latency(read_access_log(log), T0, 10, T0 + 100)
    assert srv["logged"] == 100
    assert srv["all"]["request"]["count"] == 90
    assert srv["first"]["request"]["p99"] == pytest.approx(10.0)
    assert srv["last"]["request"]["p99"] == pytest.approx(20.0)
    assert srv["last"]["upstream"]["p99"] == pytest.approx(19.0)
    assert srv["drift_pct"] == pytest.approx(100.0)
    assert read_access_log(tmp_path / "missing.log") == []


def test_cpu_thirds_gives_cores_per_process_per_third() -> None:
    # api uses 0.2 cores for the first 60 s after warm-up, then 0.5; redis a steady 0.1; a restarted process
    # (its CPU seconds fall) is left out of that third
    samples, api, redis = [], 0.0, 0.0
    for t in range(0, 101, 5):
        samples.append({"t": float(t), "cpu": {"api-1/w1": api, "redis": redis, "worker-1": 50.0 - t / 10},
                        "machine_busy_s": 1000.0 + t})  # the machine: 1 core busy throughout
        api += 5 * (0.2 if t < 70 else 0.5)
        redis += 0.5
    samples.append({"t": 101.0, "rss": {}})  # the final sample has no CPU: ignored
    cores = cpu_thirds(samples, warmup_s=10)
    assert cores["api-1/w1"]["first"] == pytest.approx(0.2)
    assert cores["api-1/w1"]["last"] == pytest.approx(0.5)
    assert cores["redis"] == {"first": pytest.approx(0.1), "last": pytest.approx(0.1)}
    assert "worker-1" not in cores
    lines = cpu_lines(cores)
    assert lines[0] == "all measured processes 0.30 -> 0.60 cores"
    assert lines[1] == "machine busy 1.00 -> 1.00 cores, of which not ours 0.70 -> 0.40"
    assert lines[2] == "api-1/w1 0.20 -> 0.50 cores (+150 %)"


def test_machine_busy_below_our_processes_is_not_reported_as_other_work() -> None:
    # a lightly loaded VM's /proc/stat counted less busy time than its processes' own counters
    cores = {"api-1/w1": {"first": 0.3, "last": 0.3}, MACHINE: {"first": 0.1, "last": 0.1}}
    lines = cpu_lines(cores)
    assert "what else ran is unknown" in lines[1]
    assert "of which not ours" not in lines[1]


def test_drift_is_judged_at_the_logs_resolution() -> None:
    assert drift_ok(100.0, 119.0) and not drift_ok(100.0, 121.0)  # 20 % of the first third's p99
    assert drift_ok(2.0, 3.0) and drift_ok(5.0, 6.0)  # one whole ms: all nginx's log can tell apart
    assert not drift_ok(2.0, 4.0)
    assert drift_ok(100.0, 60.0)  # faster is no drift
    assert drift_ok(None, 3.0) is None


def test_redis_time_per_command_thirds() -> None:
    samples = [{"t": float(t), "redis_s": {"evalsha": t * 0.2, "hgetall": max(0, t - 70) * 0.05, "get": t * 0.001}}
               for t in range(0, 101, 5)]
    seconds = cpu_thirds(samples, warmup_s=10, field="redis_s")
    assert seconds["hgetall"] == {"first": 0.0, "last": pytest.approx(0.05)}
    assert redis_lines(seconds, limit=2) == ["hgetall 0.000 -> 0.050", "evalsha 0.200 -> 0.200"]


def test_cpu_thirds_needs_samples() -> None:
    assert cpu_thirds([{"t": 0.0, "cpu": {}}], warmup_s=0) == {}
