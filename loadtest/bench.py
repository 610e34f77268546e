"""`make bench`: saturation figures with wrk, every comparison side by side in one run, with ratios.

Cases (each: warm-up, then a measured run; the queue is drained between cases so none pays for another):
  ingest      POST /errors/log through nginx to our 3 nodes (limiter off when the limiter exists)
  floor       a bare FastAPI route that only answers 202, on 3 identical nodes behind the same nginx
  limiter on  ingest with the rate limiter on, limits so high nothing is rejected (its cost only)
  batch       POST /errors/batch, --batch-size events per request (events/s accepted)
All targets are up at once and the cases alternate per round, so drift from other load on this shared
machine hits every case alike. The figures of a closed-loop generator at saturation: latency is roughly
connections / throughput; quote p99 at a paced rate from `make loadtest`, not from here.
"""

from __future__ import annotations

import argparse
import contextlib
from datetime import UTC, datetime
from typing import Any

from rich.console import Console

from loadtest import targets
from loadtest.procstats import CpuMeter, target_processes
from loadtest.report import REPORTS, bench_markdown, bench_tables, machine_description
from loadtest.wrkrun import WrkResult, run_wrk

# 150 columns when piped (CI logs, `tee`): the tables have 12 columns and must not wrap.
console = Console(width=None if Console().is_terminal else 150)


def measure(target: Any, path: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    url, key = target.url, getattr(target, "ingest_key", "")
    conns = args.batch_connections if batch else args.connections
    run_wrk(url, path=path, key=key, batch=batch, seconds=args.warmup, connections=conns)
    if hasattr(target, "settings"):
        targets.wait_drained(target)
    meter = CpuMeter(target_processes(target)).start()
    result = run_wrk(url, path=path, key=key, batch=batch, seconds=args.seconds, connections=conns)
    cores = meter.stop()
    drain = targets.wait_drained(target) if hasattr(target, "settings") else 0.0
    return {"wrk": result, "cores": cores, "drain_s": drain}


def median_case(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput (keeps each run's figures consistent with each other)."""
    ordered = sorted(runs, key=lambda r: r["wrk"].rps + r["wrk"].events_per_s)
    return ordered[len(ordered) // 2]


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
    args = parser.parse_args(argv)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = REPORTS / f"bench-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "stack.log").open("w")

    def sink(line: str) -> None:
        log.write(line + "\n")

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
            ours = targets.start_ours(out / "ours", sink, limiter=False if limiter else None,
                                      nodes=args.nodes, db=args.db)
            running.append(ours)
            floor = targets.start_floor(out / "floor", sink, nodes=args.nodes)
            running.append(floor)
            ours_on = None
            if limiter:
                ours_on = targets.start_ours(out / "ours-limited", sink, limiter=True, nodes=args.nodes,
                                             db=args.db)
                running.append(ours_on)
        cases: list[tuple[str, Any, str, int]] = [("ingest", ours, "/errors/log", 0),
                                                  ("floor", floor, "/errors/log", 0)]
        if ours_on is not None:
            cases.append(("limiter on", ours_on, "/errors/log", 0))
        cases.append(("batch", ours, "/errors/batch", args.batch_size))
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in cases}
        for rnd in range(args.rounds):
            for name, target, path, batch in cases:
                console.print(f"  round {rnd + 1}/{args.rounds}: {name} ...", end=" ")
                res = measure(target, path, batch, args)
                w: WrkResult = res["wrk"]
                console.print(f"{w.rps:,.0f} req/s" + (f", {w.events_per_s:,.0f} events/s" if batch else ""))
                results[name].append(res)
        chosen = {name: median_case(runs) for name, runs in results.items()}
        machine = machine_description()
        for table in bench_tables(chosen, limiter, args.batch_size):
            console.print(table)
        report = bench_markdown(chosen, limiter, args, machine)
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
