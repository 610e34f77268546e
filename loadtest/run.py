"""`make loadtest SCENARIO=ramp|spike|soak`: locust against our stack and the naive baseline, one report.

For each target (ours, then the baseline, both on 3 nodes behind the same nginx): start it, run locust
headless with loadtest/locustfile.py, show a live line, sample RSS per process, Redis memory and queue
depth, then check the database against what was accepted. The report (markdown + PNG chart + JSON)
goes to loadtest/reports/<scenario>-<time>/ and the seed's table is printed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live

from loadtest import loadreport, targets, verify
from loadtest.payloads import PayloadMix
from loadtest.procstats import sample
from loadtest.progress import last_aggregated, line
from loadtest.report import REPORTS, machine_description
from loadtest.scenarios import stages, total_seconds

REPO = Path(__file__).resolve().parent.parent
console = Console(width=None if Console().is_terminal else 150)


def run_locust(name: str, target: Any, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    plan = stages(args.scenario, args.stage_seconds, args.duration, args.users)
    total = total_seconds(plan)
    result_json = out / f"{name}-tally.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "LOADTEST_SCENARIO": args.scenario,
           "LOADTEST_STAGE_SECONDS": str(args.stage_seconds), "LOADTEST_DURATION": str(args.duration),
           "LOADTEST_USERS": str(args.users), "LOADTEST_KEY": getattr(target, "ingest_key", ""),
           "LOADTEST_OUT": str(result_json)}
    argv = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py"), "--headless",
            "--host", target.url, "--csv", str(out / f"{name}-locust"), "--only-summary",
            # ramp-downs and the end wait for in-flight requests (60 s > the 30 s client timeout) instead of
            # killing them: a killed request may still be counted by the server but never by the tally
            "--stop-timeout", "60",
            "--loglevel", "WARNING", "--logfile", str(out / f"{name}-locust.log")]
    samples: list[dict[str, Any]] = []
    with (out / f"{name}-locust.out").open("w") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        start, wall_start = time.monotonic(), time.time()
        next_sample = start
        usage = None
        # A terminal gets one live line; a log (CI, `tee`) gets the same line every 10 s instead.
        live = Live(console=console, refresh_per_second=2, transient=False) if console.is_terminal else None
        printed = start
        with live or contextlib.nullcontext():
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    break
                now = time.monotonic()
                if now >= next_sample:
                    samples.append(sample(target, proc.pid))
                    next_sample = now + args.sample_every
                snap = last_aggregated(out / f"{name}-locust_stats_history.csv")
                queue = samples[-1].get("queue") if samples else None
                extra = f"queue {queue}" if queue is not None else ""
                text = line(name, now - start, total, snap, extra)
                if live is not None:
                    live.update(text)
                elif now - printed >= 10:
                    console.print(text)
                    printed = now
                time.sleep(1.0)
        elapsed = time.monotonic() - start
    final = sample(target)
    final.pop("cpu")  # locust has exited: CPU spans end at the last sample taken while it ran
    samples.append(final)
    if not result_json.exists():
        raise RuntimeError(f"locust wrote no tally (exit {proc.returncode}); see {name}-locust.out in {out}")
    tally = json.loads(result_json.read_text())
    cpu = usage.ru_utime + usage.ru_stime if usage else 0.0
    nginx = getattr(target, "nginx", None)
    access_log = str(nginx.prefix / "access.log") if nginx is not None else None
    return {"tally": tally, "samples": samples, "locust_cpu_cores": cpu / elapsed, "elapsed_s": elapsed,
            "start": start, "wall_start": wall_start, "access_log": access_log}


@dataclass
class External:
    """A stack someone already runs (`faultline up`): load and latency only, no process or DB access."""

    url: str
    ingest_key: str

    def stop(self) -> None:
        pass


def warm_up(target: Any, requests: int) -> Counter[str]:
    """A few requests before the measured run, so the first stage does not time cold starts (first
    connections nginx -> nodes, Lua script loads, DB pool). Returns what was accepted, by fingerprint,
    so the count check includes them."""
    mix = PayloadMix(seed=12345)
    headers = {"Content-Type": "application/json", "X-Faultline-Key": getattr(target, "ingest_key", "")}
    accepted: Counter[str] = Counter()
    with httpx.Client(base_url=target.url, timeout=30) as client:
        for _ in range(requests):
            r = client.post("/errors/log", content=mix.body(), headers=headers)
            if r.is_success and not r.json().get("duplicate"):
                accepted[r.json().get("fingerprint", "?")] += 1
    return accepted


def run_target(name: str, args: argparse.Namespace, out: Path, sink: Any) -> dict[str, Any]:
    if name == "external":
        res = run_locust(name, External(args.url, args.key), args, out)
        res["counts"] = {"checked": False, "why": "external target: its DB also holds earlier events"}
        return res
    with console.status(f"starting {name} (MariaDB, nodes, nginx)..."):
        if name == "ours":
            limiter = None if args.no_limiter else True
            target: Any = targets.start_ours(out / name, sink, limiter=limiter, db=args.db,
                                             env={"FAULTLINE_SYNC_INTERVAL": "5"})
        else:
            target = targets.start_baseline(out / name, sink)
    try:
        warm = warm_up(target, args.warmup_requests)
        res = run_locust(name, target, args, out)
        ok = sum(st["status"].get("ok", 0) for st in res["tally"]["stages"].values()) + sum(warm.values())
        with console.status(f"{name}: checking database counts against accepted events..."):
            if name == "ours":
                accepted = Counter(res["tally"]["accepted_by_fingerprint"]) + warm
                res["counts"] = verify.verify_ours(target, dict(accepted), res["tally"].get("unknown_outcome", 0))
            else:
                res["counts"] = verify.verify_baseline(target, ok)
        return res
    finally:
        with console.status(f"stopping {name}..."):
            target.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make loadtest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=["ramp", "spike", "soak", "paced"])
    parser.add_argument("--targets", default="ours,baseline", help="comma list of: ours, baseline")
    parser.add_argument("--stage-seconds", type=float, default=30, help="ramp/spike: seconds per stage")
    parser.add_argument("--duration", type=float, default=1800, help="soak, paced: seconds (default 30 min)")
    parser.add_argument("--users", type=int, default=200, help="soak: users; paced: req/s (one user each)")
    parser.add_argument("--db", default="mariadb")
    parser.add_argument("--no-limiter", action="store_true", help="ours: rate limiter off")
    parser.add_argument("--sample-every", type=float, default=5, help="seconds between RSS/Redis samples")
    parser.add_argument("--warmup-requests", type=int, default=200, help="sequential posts before the run")
    parser.add_argument("--url", default="", help="load a running stack (e.g. http://127.0.0.1:8080) instead")
    parser.add_argument("--key", default=os.environ.get("FAULTLINE_INGEST_KEY", ""),
                        help="ingest key for --url (default: $FAULTLINE_INGEST_KEY)")
    args = parser.parse_args(argv)
    if args.url:
        args.targets = "external"

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = REPORTS / f"{args.scenario}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "stack.log").open("w")
    console.print(f"[bold]make loadtest SCENARIO={args.scenario}[/]  report: {out}")
    results: dict[str, Any] = {}

    def sink(text: str) -> None:
        log.write(text + "\n")

    try:
        for name in [t.strip() for t in args.targets.split(",") if t.strip()]:
            results[name] = run_target(name, args, out, sink)
    finally:
        log.close()
    report = loadreport.build(args, results, machine_description(), out)
    (out / "results.json").write_text(json.dumps(loadreport.jsonable(results), indent=1))
    (out / "report.md").write_text(report.markdown)
    for table in report.tables:
        console.print(table)
    console.print(f"\nreport: {out / 'report.md'}   chart: {report.chart}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
