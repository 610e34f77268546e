"""The load test report: the seed's table (p95 and error % per user level, ours next to the naive
baseline), per-stage detail, memory and drift, count checks, and a PNG chart of latency vs users."""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from loadtest.report import markdown_table
from loadtest.soakstats import TARGET_DRIFT_PCT, where_time_goes

# Targets for our stack through nginx (ramp and spike up to 1,000 users).
TARGET_P95_MS, TARGET_P99_MS, TARGET_API_RSS_MB = 10.0, 25.0, 150.0


@dataclass
class Report:
    markdown: str
    tables: list[Table]
    chart: Path


def stage_label(scenario: str, i: int, users: int) -> str:
    if scenario == "spike":
        return {0: f"{users} (before)", 1: f"{users} (spike)"}.get(i, f"{users} (after)")
    return str(users)


def stage_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    plan = res["tally"]["plan"]
    for key, st in sorted(res["tally"]["stages"].items(), key=lambda kv: int(kv[0])):
        i = int(key)
        lat, status = st["latencies_ms"], st["status"]
        total = sum(status.values())
        errors = total - status.get("ok", 0)
        rows.append({"i": i, "users": plan[i][0], "requests": total, "rps": total / plan[i][1],
                     "p50": lat.get("p50", 0), "p95": lat.get("p95", 0), "p99": lat.get("p99", 0),
                     "p999": lat.get("p999", 0), "err_pct": 100 * errors / total if total else 0.0,
                     "429": status.get("429", 0), "5xx": status.get("5xx", 0), "conn": status.get("conn", 0),
                     "other": status.get("other", 0)})
    return rows


def seed_table(scenario: str, results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    names = list(results)
    per = {n: {r["i"]: r for r in stage_rows(results[n])} for n in names}
    plan = results[names[0]]["tally"]["plan"]
    head = ["users", *(f"{n}: p95, errors" for n in names)]
    rows = []
    for i, (users, *_rest) in enumerate(plan):
        cells = []
        for n in names:
            r = per[n].get(i)
            cells.append(f"{r['p95']:.0f} ms, {r['err_pct']:.1f} %" if r else "-")
        rows.append([stage_label(scenario, i, users), *cells])
    return head, rows


def detail_rows(scenario: str, name: str, res: dict[str, Any]) -> list[list[str]]:
    return [[name, stage_label(scenario, r["i"], r["users"]), str(r["requests"]), f"{r['rps']:.0f}",
             f"{r['p50']:.1f}", f"{r['p95']:.1f}", f"{r['p99']:.1f}", f"{r['p999']:.1f}",
             str(r["429"]), str(r["5xx"]), str(r["conn"]), str(r["other"])] for r in stage_rows(res)]


DETAIL_HEAD = ["target", "users", "requests", "req/s", "p50", "p95", "p99", "p99.9", "429", "5xx", "conn",
               "other"]


def memory(res: dict[str, Any], warmup_s: float) -> dict[str, Any]:
    """RSS growth per process after warm-up, peak API worker RSS, Redis memory and queue depth."""
    samples = res["samples"]
    t0 = samples[0]["t"]
    after = [s for s in samples if s["t"] - t0 >= warmup_s] or samples[-1:]
    first, last = after[0], after[-1]
    growth = {n: 100 * (last["rss"][n] - v) / v for n, v in first["rss"].items() if v and n in last["rss"]}
    api = [v for s in samples for n, v in s["rss"].items() if n.startswith("api-")]
    redis = [s["redis_bytes"] for s in samples if "redis_bytes" in s]
    queue = [s["queue"] for s in samples if "queue" in s]
    return {"rss_growth_pct": growth, "max_growth_pct": max(growth.values(), default=0.0),
            "api_rss_max_mb": max(api, default=0) / 2**20,
            "redis_mb_after_warmup": redis[len(redis) - len(after)] / 2**20 if redis else None,
            "redis_mb_max": max(redis, default=0) / 2**20,
            "redis_mb_last": redis[-1] / 2**20 if redis else None,
            "queue_max": max(queue, default=None) if queue else None}


def p99_drift(res: dict[str, Any], warmup_s: float) -> dict[str, float] | None:
    # the last window is cut short by the end of the run (and holds the ramp-down): left out
    windows = [w for w in res["tally"]["windows"][:-1] if w["t"] >= warmup_s and w.get("count")]
    if len(windows) < 3:
        return None
    third = max(1, len(windows) // 3)
    first = statistics.median(w["p99"] for w in windows[:third])
    last = statistics.median(w["p99"] for w in windows[-third:])
    drift = 100 * (last - first) / first if first else 0.0
    return {"first_p99_ms": first, "last_p99_ms": last, "drift_pct": drift}


def verdicts(scenario: str, res: dict[str, Any], mem: dict[str, Any]) -> list[str]:
    rows = stage_rows(res)
    p95 = max(r["p95"] for r in rows)
    p99 = max(r["p99"] for r in rows)
    errors = sum(r["requests"] * r["err_pct"] / 100 for r in rows)
    out = []
    if scenario in ("ramp", "spike", "paced"):
        out.append(f"worst stage p95 {p95:.1f} ms (target <= {TARGET_P95_MS:g}): "
                   f"{'meets' if p95 <= TARGET_P95_MS else 'MISSES'}")
        out.append(f"worst stage p99 {p99:.1f} ms (target <= {TARGET_P99_MS:g}): "
                   f"{'meets' if p99 <= TARGET_P99_MS else 'MISSES'}")
        out.append(f"errors {errors:.0f} (target 0): {'meets' if errors == 0 else 'MISSES'}")
    out.append(f"API process RSS max {mem['api_rss_max_mb']:.0f} MB (target <= {TARGET_API_RSS_MB:g}): "
               f"{'meets' if mem['api_rss_max_mb'] <= TARGET_API_RSS_MB else 'MISSES'}")
    return out


def jsonable(results: dict[str, Any]) -> dict[str, Any]:
    return {n: {k: v for k, v in r.items() if k != "start"} for n, r in results.items()}


def build(args: argparse.Namespace, results: dict[str, Any], machine: str, out: Path) -> Report:
    from loadtest.chart import draw  # matplotlib: only when a chart is drawn

    warmup = min(300.0, 0.2 * max(r["elapsed_s"] for r in results.values()))
    series = {name: (stage_rows(res), res["tally"]["windows"]) for name, res in results.items()}
    chart = draw(args.scenario, series, out / "latency.png")
    head, rows = seed_table(args.scenario, results)
    detail = [row for n, r in results.items() for row in detail_rows(args.scenario, n, r)]
    md = [f"# make loadtest SCENARIO={args.scenario}\n", f"Machine: {machine}\n",
          f"Command: `python -m loadtest.run {args.scenario} --targets {args.targets} "
          f"--stage-seconds {args.stage_seconds:g} --duration {args.duration:g} --users {args.users}`\n",
          "## p95 and errors per user level (the seed's table)\n", markdown_table(head, rows), "",
          "## Per stage (ms)\n", markdown_table(DETAIL_HEAD, detail), "", "![latency](latency.png)\n"]
    tables = [_rich("p95 and errors per user level (the seed's table)", head, rows),
              _rich("Per stage (ms)", DETAIL_HEAD, detail)]
    for name, res in results.items():
        mem = memory(res, warmup)
        steady = args.scenario in ("soak", "paced")  # ramp/spike change the load
        drift = p99_drift(res, warmup) if steady else None
        lines = [f"locust CPU: {res['locust_cpu_cores']:.2f} cores over {res['elapsed_s']:.0f} s",
                 f"counts: {res['counts']}",
                 f"RSS growth after {warmup:.0f} s warm-up: max {mem['max_growth_pct']:.1f} % "
                 f"({', '.join(f'{k} {v:+.1f}%' for k, v in sorted(mem['rss_growth_pct'].items()))})"]
        if mem["redis_mb_last"] is not None:
            lines.append(f"Redis memory: {mem['redis_mb_after_warmup']:.1f} MB after warm-up, max "
                         f"{mem['redis_mb_max']:.1f} MB, end {mem['redis_mb_last']:.1f} MB; "
                         f"queue depth max {mem['queue_max']}")
        if drift:
            lines.append(f"p99 drift: {drift['first_p99_ms']:.1f} ms (first third) -> "
                         f"{drift['last_p99_ms']:.1f} ms (last third), {drift['drift_pct']:+.0f} % (target <= "
                         f"+{TARGET_DRIFT_PCT:g} %): {'meets' if drift['drift_pct'] <= TARGET_DRIFT_PCT else 'MISSES'}")
        if steady:
            lines += where_time_goes(res, warmup, TARGET_P99_MS)
        if name == "ours":
            lines += verdicts(args.scenario, res, mem)
        md.append(f"## {name}\n\n" + "\n".join(f"- {ln}" for ln in lines) + "\n")
        tables.append(_rich(name, ["notes"], [[ln] for ln in lines]))
    return Report("\n".join(md), tables, chart)


def _rich(title: str, head: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(head):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table
