"""The measuring code itself: traffic mix, wrk output parsing, stages, percentiles, report arithmetic."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import orjson
import pytest

from core.events import LogErrorIn
from loadtest import loadreport, verify
from loadtest.cmdstats import compare_rows, delta
from loadtest.payloads import HOT_SHARE, REPEAT_SHARE, PayloadMix
from loadtest.profile import top_costs
from loadtest.progress import last_aggregated
from loadtest.scenarios import stage_at, stages, total_seconds
from loadtest.stats import classify, summary
from loadtest.wrkrun import parse_output

WRK_LINE = ('WRKJSON {"requests":1200,"duration_us":4000000,"connect":1,"read":2,"write":0,"timeout":3,'
            '"non2xx":7,"p50_us":1500,"p95_us":4000,"p99_us":9000,"p999_us":20000,"max_us":31000,'
            '"n2xx":1193,"n429":4,"n5xx":3,"nother":0,"accepted":0}')


def test_payload_mix_is_valid_skewed_and_repeats_some_event_ids() -> None:
    mix = PayloadMix(seed=7)
    events = [mix.event() for _ in range(20_000)]
    for event in events[:200]:
        LogErrorIn.model_validate_json(orjson.dumps(event))  # every body is one the API accepts
    hot = sum(str(e["fingerprint"]).startswith("hot-") for e in events) / len(events)
    assert abs(hot - HOT_SHARE) < 0.03
    ids = Counter(str(e["event_id"]) for e in events)
    repeats = sum(n - 1 for n in ids.values()) / len(events)
    assert 0.5 * REPEAT_SHARE < repeats < 2 * REPEAT_SHARE
    assert len({e["fingerprint"] for e in events}) > 1000  # a long tail, not a handful of groups


def test_batch_body_holds_the_requested_number_of_events() -> None:
    body = orjson.loads(PayloadMix(seed=1).batch_body(25))
    assert len(body["events"]) == 25


def test_wrk_result_line_is_parsed_into_rates_and_error_classes() -> None:
    r = parse_output("Running 4s test\n" + WRK_LINE + "\n", cpu_seconds=0.8)
    assert r.ok == 1193 and r.rejected_429 == 4 and r.errors_5xx == 3 and r.conn_errors == 6
    assert r.rps == pytest.approx(1193 / 4)
    assert (r.p50_ms, r.p99_ms, r.p999_ms) == (1.5, 9.0, 20.0)
    assert r.generator_cores == pytest.approx(0.2)


def test_wrk_without_a_result_line_is_an_error_not_zeros() -> None:
    with pytest.raises(RuntimeError, match="no result line"):
        parse_output("unable to connect to 127.0.0.1:1 Connection refused", 0.0)


def test_ramp_plan_has_the_seed_levels_and_stage_lookup_follows_time() -> None:
    plan = stages("ramp", stage_seconds=10)
    assert [s.users for s in plan] == [10, 50, 100, 200, 500]
    assert stage_at(plan, 0) == 0 and stage_at(plan, 10.5) == 1 and stage_at(plan, 49.9) == 4
    assert stage_at(plan, total_seconds(plan)) is None
    spike = stages("spike", stage_seconds=5)
    assert max(s.users for s in spike) == 1000 and spike[1].spawn_rate >= 1000
    assert stages("soak", duration=60, users=30)[0].users == 30
    with pytest.raises(ValueError):
        stages("bogus")


def test_status_classes_and_percentiles() -> None:
    assert [classify(s) for s in (202, 429, 503, 0, 413)] == ["ok", "429", "5xx", "conn", "other"]
    s = summary([float(i) for i in range(1, 101)])
    assert (s["count"], s["p50"], s["p95"], s["p99"], s["max"]) == (100, 51.0, 96.0, 100.0, 100.0)
    assert summary([]) == {"count": 0}


def test_progress_reads_the_latest_aggregated_row(tmp_path: Path) -> None:
    csv = tmp_path / "h.csv"
    csv.write_text("Timestamp,User Count,Type,Name,Requests/s,Failures/s,95%,Total Request Count,"
                   "Total Failure Count\n"
                   "1,10,,Aggregated,9.5,0,N/A,10,0\n"
                   "2,50,POST,/errors/log,40,0,12,60,1\n"
                   "2,50,,Aggregated,41.0,0.1,12,60,1\n")
    snap = last_aggregated(csv)
    assert (snap.users, snap.rps, snap.p95_ms, snap.requests, snap.failures) == (50, 41.0, 12.0, 60, 1)
    assert last_aggregated(tmp_path / "missing.csv").requests == 0


def _result(p95s: list[float], errors: int = 0) -> dict:
    plan = [[u, 10, 100] for u in (10, 50)]
    stages_ = {str(i): {"latencies_ms": {"count": 100, "p50": p / 2, "p95": p, "p99": p * 2, "p999": p * 3},
                        "status": {"ok": 100 - errors * i, **({"5xx": errors * i} if i else {})}}
               for i, p in enumerate(p95s)}
    windows = [{"t": t, "users": 10, "count": 10, "p95": 5.0, "p99": 10.0 + t} for t in range(0, 100, 10)]
    samples = [{"t": t, "rss": {"api-1/w1": 100 * 2**20 + t * 2**20}, "redis_bytes": 2**20, "queue": 3}
               for t in range(0, 100, 10)]
    return {"tally": {"plan": plan, "stages": stages_, "windows": windows}, "samples": samples,
            "locust_cpu_cores": 0.1, "elapsed_s": 100.0, "counts": {"exact": True}}


def test_seed_table_puts_both_targets_side_by_side() -> None:
    results = {"ours": _result([3.0, 4.0]), "baseline": _result([20.0, 80.0], errors=5)}
    head, rows = loadreport.seed_table("ramp", results)
    assert head == ["users", "ours: p95, errors", "baseline: p95, errors"]
    assert rows == [["10", "3 ms, 0.0 %", "20 ms, 0.0 %"], ["50", "4 ms, 0.0 %", "80 ms, 5.0 %"]]


def test_memory_growth_and_p99_drift_are_measured_after_warm_up() -> None:
    res = _result([3.0, 4.0])
    mem = loadreport.memory(res, warmup_s=20)
    assert mem["rss_growth_pct"]["api-1/w1"] == pytest.approx(100 * 70 / 120)
    assert mem["api_rss_max_mb"] == pytest.approx(190)
    drift = loadreport.p99_drift(res, warmup_s=20)
    assert drift is not None and drift["last_p99_ms"] > drift["first_p99_ms"]


def test_report_builds_markdown_and_a_png(tmp_path: Path) -> None:
    args = argparse.Namespace(scenario="ramp", targets="ours,baseline", stage_seconds=10, duration=60, users=10)
    results = {"ours": _result([3.0, 4.0]), "baseline": _result([20.0, 80.0], errors=5)}
    report = loadreport.build(args, results, "test machine", tmp_path)
    assert "| 50 | 4 ms, 0.0 % | 80 ms, 5.0 % |" in report.markdown
    assert report.chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_count_comparison_names_the_groups_that_differ() -> None:
    assert verify.compare({"a": 3, "b": 1}, {"a": 3, "b": 1})["exact"] is True
    diff = verify.compare({"a": 3, "b": 1}, {"a": 2, "c": 1})
    assert diff["exact"] is False and diff["groups_wrong"] == 3 and diff["examples"]["a"] == (3, 2)


def test_counts_above_the_tally_are_right_only_within_the_unknown_outcomes() -> None:
    # two events failed twice on the client side; the server counted one of them: still correct
    ok = verify.compare({"a": 3}, {"a": 4}, unknown=2)
    assert ok["exact"] is False and ok["within_unknown"] is True
    assert verify.compare({"a": 3}, {"a": 6}, unknown=2)["within_unknown"] is False  # more than could be
    assert verify.compare({"a": 3}, {"a": 2}, unknown=2)["within_unknown"] is False  # a lost event never is


def test_payload_mix_flags_deliberate_repeats() -> None:
    mix = PayloadMix(seed=3)
    seen: set[str] = set()
    for _ in range(2000):
        event_id = str(mix.event()["event_id"])
        assert mix.last_was_repeat == (event_id in seen)
        seen.add(event_id)


def test_profile_top_costs_from_collapsed_stacks(tmp_path: Path) -> None:
    raw = tmp_path / "api.txt"
    raw.write_text("main (app.py:1);handle (api/x.py:10);encode (json.py:5) 30\n"
                   "main (app.py:1);handle (api/x.py:12) 10\n"
                   "main (app.py:1);handle (api/x.py:10);encode (json.py:7) 40\n"
                   "garbage line\n"
                   "main (app.py:2);idle (loop.py:3) 20\n")
    samples, rows = top_costs(raw)
    assert samples == 100
    by_fn = {fn: (own, inc) for fn, own, inc in rows}
    assert by_fn["encode (json.py)"] == (70.0, 70.0)  # two lines of one function are one row
    assert by_fn["handle (api/x.py)"] == (10.0, 80.0)
    assert by_fn["idle (loop.py)"] == (20.0, 20.0)
    assert rows[0][0] == "encode (json.py)"
    assert "main (app.py)" not in by_fn  # never a leaf: no self time


def test_commandstats_delta_and_the_commands_the_gap_is_made_of() -> None:
    before = {"evalsha": (10, 1000), "hget": (5, 50), "ping": (3, 3)}
    one = delta(before, {"evalsha": (110, 3000), "hget": (205, 450), "ping": (3, 3)})
    assert one == {"evalsha": (100, 2000), "hget": (200, 400)}  # unchanged commands are left out
    assert delta(None, {"hget": (1, 1)}) == {}  # a target without our Redis: nothing, not made-up figures
    many = {"evalsha": (100, 2400), "hget": (200, 400), "hmget": (50, 100)}
    rows = compare_rows(one, 100, many, 100, "16")
    # largest µs-per-event difference first: EVALSHA +4, HMGET (16 shards only) +1, HGET 0
    assert [r[0] for r in rows[1:]] == ["evalsha", "hmget", "hget"]
    assert rows[2] == ["hmget", "0.000", "0.500", "0.00", "1.00", "+1.00"]
    assert compare_rows(one, 0, many, 100, "16") == []
