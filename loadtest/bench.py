"""`make bench`: saturation figures with wrk, every comparison side by side in one run, with ratios.

Cases (each: warm-up, then a measured run; the queue is drained between cases so none pays for another):
  ingest      POST /errors/log through nginx to our 3 nodes (limiter off when the limiter exists)
  floor       a bare FastAPI route that only answers 202, on 3 identical nodes behind the same nginx
  limiter on  ingest with the rate limiter on, limits so high nothing is rejected (its cost only)
  batch       POST /errors/batch, --batch-size events per request (events/s accepted)
  envelope    POST /api/<project>/envelope/ as a Sentry SDK sends it: gzip, one event per envelope
  ingest sharded  ingest on a second stack with FAULTLINE_REDIS_SHARDS=16 on its one Redis server: what
              key sharding costs where it buys nothing (issue 12: <= 10 % CPU per event); --shards 0 skips
All targets are up at once and the cases alternate per round, so drift from other load on this shared
machine hits every case alike; every second round runs them in reverse order (A B C, C B A, ...), so a case's
place in the run (what the stacks that ran before it still do) does not favour one side of a ratio.
The figures of a closed-loop generator at saturation: latency is roughly connections / throughput;
quote p99 at a paced rate from `make loadtest`, not from here.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import random
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis
from rich.console import Console
from rich.table import Table

from core.access import key_hash
from core.keys import Keys
from faultline.procs import FileSink
from loadtest import cmdstats, profile, targets
from loadtest.partialreport import partial_markdown
from loadtest.procstats import CpuMeter, target_processes
from loadtest.report import REPORTS, SHARDED, bench_markdown, bench_tables, machine_description
from loadtest.wrkrun import WrkResult, parse_output, run_wrk

ENVELOPE_SCRIPT = Path(__file__).resolve().parent / "wrk" / "envelope.lua"

# 150 columns when piped (CI logs, `tee`): the tables have 12 columns and must not wrap.
console = Console(width=None if Console().is_terminal else 150)


def envelope_bodies(out: Path, count: int = 200) -> Path:
    """gzip envelopes of one Sentry-shaped event each (the hot/warm/tail group mix of ingest.lua), as the
    Python SDK sends them; written length-prefixed for loadtest/wrk/envelope.lua."""
    rng = random.Random(7)
    path = out / "envelopes.bin"
    with path.open("wb") as f:
        for i in range(count):
            r = rng.random()
            group = f"hot-{i % 5}" if r < 0.6 else f"warm-{i % 50}" if r < 0.9 else f"tail-{i}"
            event = {"platform": "python", "level": "error", "tags": {"service": "checkout"},
                     "exception": {"values": [{"type": "TimeoutError", "value": f"upstream timed out ({group})",
                                               "stacktrace": {"frames": [
                                                   {"module": "app.views", "function": "handler", "lineno": 42,
                                                    "in_app": True},
                                                   {"module": f"app.{group}", "function": "call", "lineno": 7,
                                                    "in_app": True}]}}]},
                     "sdk": {"name": "sentry.python", "version": "2.0"}}
            payload = orjson.dumps(event)
            body = gzip.compress(b"\n".join([b"{}", orjson.dumps({"type": "event", "length": len(payload)}),
                                              payload]) + b"\n")
            f.write(b"%08d" % len(body) + body)
    return path


def run_envelope_wrk(target: Any, bodies: Path, seconds: float, connections: int) -> WrkResult:
    settings = target.settings()
    client = redis.Redis.from_url(settings.redis_url)
    # the Redis copy of the projects maps the key's hash (never the key) to the project id
    project = int(client.hget(Keys.from_settings(settings).projects, key_hash(target.ingest_key)))  # type: ignore[arg-type]
    client.close()
    binary = shutil.which("wrk")
    if not binary:
        raise SystemExit("wrk not found: run `sudo apt-get install -y wrk`")
    argv = [binary, "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout=5s",
            "-s", str(ENVELOPE_SCRIPT), target.url, "--", f"/api/{project}/envelope/", target.ingest_key,
            str(bodies)]
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0)
        text = out.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"wrk exited with {status}:\n{text[-2000:]}")
    return parse_output(text, usage.ru_utime + usage.ru_stime)


def measure(target: Any, path: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    url, key = target.url, getattr(target, "ingest_key", "")
    conns = args.batch_connections if batch else args.connections
    if path == "envelope":
        run_envelope_wrk(target, args.envelopes, args.warmup, conns)
    else:
        run_wrk(url, path=path, key=key, batch=batch, seconds=args.warmup, connections=conns)
    if hasattr(target, "settings"):
        targets.wait_drained(target)
    stats0 = cmdstats.snapshot(target)
    meter = CpuMeter(target_processes(target)).start()
    if path == "envelope":
        result = run_envelope_wrk(target, args.envelopes, args.seconds, conns)
    else:
        result = run_wrk(url, path=path, key=key, batch=batch, seconds=args.seconds, connections=conns)
    cores = meter.stop()
    drain = targets.wait_drained(target) if hasattr(target, "settings") else 0.0
    # CPU seconds until the queue is drained: the workers' share of this case's events, even the late ones
    cpu_drained = meter.cpu_seconds()
    return {"wrk": result, "cores": cores, "drain_s": drain, "cpu_s_drained": cpu_drained,
            "commandstats": cmdstats.delta(stats0, cmdstats.snapshot(target))}


def profile_pass(name: str, target: Any, path: str, batch: int, args: argparse.Namespace, out: Path) -> str:
    """Two unmeasured runs of a case with py-spy on the first API process (the floor's: its first node) and
    every worker: one for the flame graphs, one for the raw stacks of the report's table."""
    pids = {n: p.pid for n, p in target_processes(target).items()
            if n in ("api-1/w1", "node-1/w1") or (n.startswith("worker-") and "/" not in n)}
    conns = args.batch_connections if batch else args.connections
    raws: list[profile.Recording] = []
    for fmt in ("flamegraph", "raw"):
        recordings = profile.record(pids, args.seconds, out / "profile" / name, fmt)
        run_wrk(target.url, path=path, key=getattr(target, "ingest_key", ""), batch=batch, seconds=args.seconds,
                connections=conns)
        for rec in recordings:
            rec.proc.wait()
        if hasattr(target, "settings"):
            targets.wait_drained(target)
        raws = recordings
    return profile.markdown(raws, name)


def median_case(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput (keeps each run's figures consistent with each other)."""
    ordered = sorted(runs, key=lambda r: r["wrk"].rps + r["wrk"].events_per_s)
    return ordered[len(ordered) // 2]


ENVELOPE_HEAD = ["case", "req/s", "p50 ms", "p99 ms", "429", "5xx", "conn err", "stack CPU"]


def envelope_rows(chosen: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name in ("ingest", "envelope"):
        w, cores = chosen[name]["wrk"], sum(chosen[name]["cores"].values())
        rows.append([name if name == "envelope" else "/errors/log", f"{w.rps:,.0f}", f"{w.p50_ms:.1f}",
                     f"{w.p99_ms:.1f}", str(w.rejected_429), str(w.errors_5xx), str(w.conn_errors), f"{cores:.2f}"])
    log_rps, env_rps = chosen["ingest"]["wrk"].rps, chosen["envelope"]["wrk"].rps
    rows.append(["envelope / log", f"{env_rps / log_rps if log_rps else 0:.2f}", "", "", "", "", "", ""])
    return rows


def envelope_markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(ENVELOPE_HEAD) + " |", "|" + "---|" * len(ENVELOPE_HEAD)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n## Sentry envelope (gzip, 1 event each) vs POST /errors/log\n\n" + "\n".join(lines) + "\n"


def full_report(chosen: dict[str, Any], limiter: bool, args: argparse.Namespace, machine: str) -> str:
    """Every table printed, and the markdown report of a whole run."""
    for table in bench_tables(chosen, limiter, args.batch_size):
        console.print(table)
    sentry_rows = envelope_rows(chosen)
    table = Table(title="Sentry envelope (gzip, 1 event each, like the SDK) vs POST /errors/log",
                  title_justify="left")
    for i, col in enumerate(ENVELOPE_HEAD):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in sentry_rows:
        table.add_row(*row)
    console.print(table)
    return bench_markdown(chosen, limiter, args, machine) + envelope_markdown(sentry_rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8, help="measured seconds per case and round")
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="rounds of all cases; the median is kept")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=100)
    # Fewer connections for batches: 64 concurrent 100-event scripts queue up in Redis (one thread) past
    # the 0.5 s redis_timeout and turn into 503s; 16 keeps Redis busy without that queue.
    parser.add_argument("--batch-connections", type=int, default=16)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--db", default="mariadb")
    parser.add_argument("--shards", type=int, default=16,
                        help="key shards of the sharded-ingest case on one Redis server (0: no such case)")
    parser.add_argument("--only", default="",
                        help="comma-separated cases to run (e.g. 'ingest,ingest sharded': issue 12's shard "
                             "table alone, ~1 min); only the targets they need are started")
    parser.add_argument("--profile", action="store_true",
                        help="after the measured rounds, one pass of ingest, floor, limiter on, batch and ingest "
                             "sharded under py-spy: flame graphs and the top costs per process in the report")
    args = parser.parse_args(argv)
    only = {c.strip() for c in args.only.split(",") if c.strip()}
    wanted = (lambda name: not only or name in only)  # noqa: E731

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = REPORTS / f"bench-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    log = sink = FileSink(out / "stack.log")
    args.envelopes = envelope_bodies(out)

    limiter = targets.limiter_available()
    console.print(f"[bold]make bench[/]: {args.nodes} nodes x 1 uvicorn worker, nginx least_conn, "
                  f"db={args.db}, wrk -c{args.connections} (batch -c{args.batch_connections}), "
                  f"{args.warmup:g}s warm-up + {args.seconds:g}s x {args.rounds} round(s)")
    if not limiter:
        console.print("[yellow]limiter not available[/] (no rate_limit_enabled setting yet): "
                      "the limiter on/off comparison is skipped, no figures are made up")
    running: list[Any] = []
    try:
        with console.status("starting targets (MariaDB, Redis, nodes, nginx)..."):
            ours = floor = None
            if any(wanted(c) for c in ("ingest", "batch", "envelope")):
                ours = targets.start_ours(out / "ours", sink, limiter=False if limiter else None,
                                          nodes=args.nodes, db=args.db)
                running.append(ours)
            if wanted("floor"):
                floor = targets.start_floor(out / "floor", sink, nodes=args.nodes)
                running.append(floor)
            ours_on = None
            if limiter and wanted("limiter on"):
                ours_on = targets.start_ours(out / "ours-limited", sink, limiter=True, nodes=args.nodes,
                                             db=args.db)
                running.append(ours_on)
            sharded = None
            if args.shards > 1 and wanted(SHARDED):
                sharded = targets.start_ours(out / "ours-sharded", sink, limiter=False if limiter else None,
                                             nodes=args.nodes, db=args.db,
                                             env={"FAULTLINE_REDIS_SHARDS": str(args.shards)})
                running.append(sharded)
        cases: list[tuple[str, Any, str, int]] = [("ingest", ours, "/errors/log", 0),
                                                  ("floor", floor, "/errors/log", 0)]
        if ours_on is not None:
            cases.append(("limiter on", ours_on, "/errors/log", 0))
        if sharded is not None:
            cases.append((SHARDED, sharded, "/errors/log", 0))
        cases.append(("batch", ours, "/errors/batch", args.batch_size))
        cases.append(("envelope", ours, "envelope", 0))
        cases = [c for c in cases if wanted(c[0])]
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in cases}
        for rnd in range(args.rounds):
            for name, target, path, batch in (cases if rnd % 2 == 0 else cases[::-1]):
                console.print(f"  round {rnd + 1}/{args.rounds}: {name} ...", end=" ")
                res = measure(target, path, batch, args)
                res["shards"] = args.shards if name == SHARDED else 1
                w: WrkResult = res["wrk"]
                console.print(f"{w.rps:,.0f} req/s" + (f", {w.events_per_s:,.0f} events/s" if batch else ""))
                results[name].append(res)
        chosen = {name: median_case(runs) for name, runs in results.items()}
        machine = machine_description()
        if only:  # a partial run: the tables its cases make, no others (they compare against absent cases)
            report = partial_markdown(chosen, args, machine)
            console.print(report)
        else:
            report = full_report(chosen, limiter, args, machine)
        if args.profile:
            for name, target, path, batch in cases:
                # the floor and the limiter too: what an API process pays beyond the floor's, and for the limiter
                if name in ("ingest", "floor", "limiter on", "batch", SHARDED):
                    console.print(f"  profile pass: {name} under py-spy ...")
                    report += profile_pass(name, target, path, batch, args, out)
        (out / "bench.md").write_text(report)
        console.print(f"\nmachine: {machine}\nreport: {out / 'bench.md'}  (stack logs: {out / 'stack.log'})")
    finally:
        with console.status("stopping targets..."):
            for target in reversed(running):
                with contextlib.suppress(Exception):
                    target.stop()
        log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
