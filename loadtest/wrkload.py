"""`make loadtest-wrk SCENARIO=soak|paced`: the soak and the paced rate of issue 15 with wrk as the client.

Why not locust here: locust is Python, and on this 2-core machine its ~1,000 users took ~1 core of the 2
(more as the run went on), so its runs measured the server competing with its client; the issue's own
paced figures came from a compiled client. wrk (loadtest/wrk/paced.lua) needs ~0.1 core for 1,000 req/s.
- paced: --rate requests/s on the clock (an open rate: a slow answer does not delay the next request);
- soak: --users connections, each posting once, then pausing 1 s (a k6/locust user), for --duration.
Reported: wrk's client-side latency, nginx's `$request_time` (server side) over the run and its first vs
last third (the drift), 5xx and socket errors, CPU per role and the machine's CPU pressure (PSI: the share
of time some runnable task waited for a core), and the database counted group by group against every
event wrk saw accepted (a request with no answer is "unknown": it may or may not have counted).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from loadtest import soakstats, targets, verify
from loadtest.procstats import grouped_cores, sample
from loadtest.report import REPORTS, machine_description
from loadtest.run import warm_up
from loadtest.wrkrun import run_argv, wrk_binary

SCRIPT = Path(__file__).resolve().parent / "wrk" / "paced.lua"
THREADS = 2
console = Console(width=None if Console().is_terminal else 150)


def cpu_pressure_us() -> int | None:
    """/proc/pressure/cpu "some" total (µs some task waited for a core), or None without PSI."""
    try:
        return int(Path("/proc/pressure/cpu").read_text().split()[4].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def wrk_argv(url: str, key: str, scenario: str, load: int, seconds: float) -> list[str]:
    binary = wrk_binary()
    if scenario == "paced":  # each connection sends ~2 req/s: 500 ms of headroom before the rate slips
        connections, gap = max(THREADS, load // 2), 1000 * THREADS / load
    else:
        connections, gap = load, -1000.0
    per_thread = max(1, connections // THREADS)
    return [binary, f"-t{THREADS}", f"-c{per_thread * THREADS}", f"-d{max(1, round(seconds))}s", "--timeout=30s",
            "-s", str(SCRIPT), url, "--", "/errors/log", key, "0", f"{gap:.4f}", str(per_thread)]


def run_wrk(argv: list[str], tally_path: Path) -> tuple[Any, Counter[str], int]:
    """wrk's result, the events it saw accepted by fingerprint, and the requests sent but never answered."""
    result = run_argv(argv, env={**os.environ, "WRK_TALLY": str(tally_path)})
    accepted: Counter[str] = Counter()
    unanswered = 0
    for line in tally_path.read_text().splitlines():
        fp, _, n = line.rpartition(" ")
        if fp == "#unanswered":
            unanswered = int(n)
        else:
            accepted[fp] += int(n)
    return result, accepted, unanswered


def sampler(target: Any, every: float, samples: list[dict[str, Any]], stop: threading.Event) -> None:
    while not stop.wait(every):
        samples.append(sample(target))


def cores_by_role(samples: list[dict[str, Any]]) -> dict[str, float]:
    a, b = samples[0], samples[-1]
    span = b["t"] - a["t"]
    cores = {k: (b["cpu"][k] - a["cpu"].get(k, 0.0)) / span for k in b["cpu"]} if span > 0 else {}
    return {k: round(v, 3) for k, v in sorted(grouped_cores(cores).items(), key=lambda kv: -kv[1])}


def measure(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    sink_file = (out / "stack.log").open("w")

    def sink(line: str) -> None:
        sink_file.write(line + "\n")

    target = targets.start_ours(out / "ours", sink, limiter=True, env={"FAULTLINE_SYNC_INTERVAL": "5"})
    try:
        warm = warm_up(target, args.warmup_requests)
        samples = [sample(target)]
        stop = threading.Event()
        thread = threading.Thread(target=sampler, args=(target, args.sample_every, samples, stop), daemon=True)
        thread.start()
        psi0, wall0 = cpu_pressure_us(), time.time()
        argv = wrk_argv(target.url, target.ingest_key, args.scenario, args.load, args.duration)
        console.print(f"{args.scenario}: {' '.join(argv[:5])} ... for {args.duration:.0f} s")
        wrk, accepted, unanswered = run_wrk(argv, out / "wrk-tally.txt")
        wall1, psi1 = time.time(), cpu_pressure_us()
        stop.set()
        thread.join()
        samples.append(sample(target))
        assert target.nginx is not None
        rows = soakstats.read_access_log(target.nginx.prefix / "access.log")
        server = soakstats.server_latency(rows, wall0, args.warmup_s, wall1)
        with console.status("checking database counts against accepted events..."):  # unanswered: may count
            counts = verify.verify_ours(target, dict(accepted + warm), unanswered)
    finally:
        target.stop()
        sink_file.close()
    psi = (psi1 - psi0) / 1e6 / (wall1 - wall0) if psi0 is not None and psi1 is not None else None
    # what grows over the run, process by process and Redis command by command: where a drift comes from
    thirds = {"cpu": soakstats.cpu_thirds(samples, args.warmup_s),
              "redis_s": soakstats.cpu_thirds(samples, args.warmup_s, field="redis_s")}
    return {"scenario": args.scenario, "load": args.load, "duration_s": args.duration, "argv": argv,
            "wrk": vars(wrk) | {"rps": wrk.rps, "generator_cores": wrk.generator_cores},
            "server": server, "counts": counts, "cores": cores_by_role(samples), "cpu_pressure": psi,
            "thirds": thirds}


def counts_word(counts: dict[str, Any]) -> str:
    if counts["exact"]:
        return "exact"
    return "within the unanswered" if counts["within_unknown"] else "WRONG"


def markdown(res: dict[str, Any], machine: str, command: str) -> str:
    w, s = res["wrk"], res["server"]
    a, first, last = s["all"]["request"], s["first"]["request"], s["last"]["request"]
    drift = s["drift_pct"]
    pressure = "n/a" if res["cpu_pressure"] is None else f"{res['cpu_pressure']:.0%}"
    lines = [f"# {res['scenario']} with wrk: {res['load']} {'req/s' if res['scenario'] == 'paced' else 'users'}"
             f" x {res['duration_s']:.0f} s", "", f"`{command}`", "", machine, "",
             "| measure | figure |", "|---|---|",
             f"| requests (2xx / 429 / 5xx / no answer) | {w['requests']:,} ({w['ok']:,} / {w['rejected_429']} / "
             f"{w['errors_5xx']} / {w['conn_errors']}), {w['rps']:.0f}/s |",
             f"| client p50 / p95 / p99 / p99.9 (wrk) | {w['p50_ms']:.1f} / {w['p95_ms']:.1f} / {w['p99_ms']:.1f} / "
             f"{w['p999_ms']:.1f} ms |",
             f"| server p50 / p95 / p99 / max (nginx `$request_time`) | {a.get('p50', 0):.0f} / {a.get('p95', 0):.0f}"
             f" / {a.get('p99', 0):.0f} / {a.get('max', 0):.0f} ms |",
             f"| server p99 first third / last third | {first.get('p99', 0):.0f} / {last.get('p99', 0):.0f} ms "
             f"(drift {'n/a' if drift is None else f'{drift:+.0f} %'}; target within "
             f"{soakstats.TARGET_DRIFT_PCT:.0f} % or the log's {soakstats.LOG_RESOLUTION_MS:.0f} ms: "
             f"{ {True: 'meets', False: 'MISSES', None: 'n/a'}[s.get('drift_ok')] }) |",
             f"| counts | {counts_word(res['counts'])}: {res['counts']['in_db']:,} in the DB for "
             f"{res['counts']['accepted']:,} accepted, {res['counts']['unknown_outcome']} sent but unanswered (a "
             "timeout, or in flight when wrk stopped: may have counted) |",
             f"| CPU cores by role | {', '.join(f'{k} {v:.2f}' for k, v in res['cores'].items())}; wrk "
             f"{w['generator_cores']:.2f} |",
             f"| CPU pressure (PSI some) | {pressure} of the time some task waited for a core |"]
    span = (s["span_s"] or 1.0) / 3
    lines += ["", f"First third -> last third: {first.get('count', 0) / span:.0f} -> {last.get('count', 0) / span:.0f}"
              " req/s (nginx log)"]
    if res["thirds"]["cpu"]:
        lines += ["- CPU per process: " + "; ".join(soakstats.cpu_lines(res["thirds"]["cpu"]))]
    if res["thirds"]["redis_s"]:
        lines += ["- Redis time per command (cores): " + "; ".join(soakstats.redis_lines(res["thirds"]["redis_s"]))]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make loadtest-wrk", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=["soak", "paced"])
    parser.add_argument("--load", type=int, default=0, help="paced: req/s (500); soak: users (1,000)")
    parser.add_argument("--duration", type=float, default=0, help="seconds (paced 180, soak 600)")
    parser.add_argument("--warmup-s", type=float, default=10, help="seconds left out of the server figures")
    parser.add_argument("--warmup-requests", type=int, default=200)
    parser.add_argument("--sample-every", type=float, default=5)
    args = parser.parse_args(argv)
    args.load = args.load or (500 if args.scenario == "paced" else 1000)
    args.duration = args.duration or (180 if args.scenario == "paced" else 600)
    out = REPORTS / f"wrk-{args.scenario}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    out.mkdir(parents=True, exist_ok=True)
    res = measure(args, out)
    command = (f"python -m loadtest.wrkload {args.scenario} --load {args.load} --duration {args.duration:.0f}")
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "report.md").write_text(markdown(res, machine_description(), command))
    console.print((out / "report.md").read_text())
    console.print(f"report: {out / 'report.md'}")
    return 0 if res["counts"]["exact"] or res["counts"]["within_unknown"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
