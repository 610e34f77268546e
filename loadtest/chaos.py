"""`make chaos`: every dependency fault against the real local stack under load, one table.

Each fault gets a fresh stack (MariaDB, Redis with AOF, 3 API nodes behind nginx, 2 workers, a scheduler,
supervised from a thread as `faultline up` does) and >= 100 keep-alive clients sending events with unique
ids for the whole run: a steady phase, the fault, a recovery phase under load, then the clients settle every
undecided event by re-sending it (same id), the pipeline drains, counts sync, and the DB is checked against
what the clients were told (loadtest/chaos_account.py). Reports: loadtest/reports/chaos-<time>.md / .json.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from loadtest import chaos_stack
from loadtest.chaos_account import account, client_view, dead_lettered_ids
from loadtest.chaos_faults import FAULTS, Fault
from loadtest.chaos_load import TRANSPORT, ChaosLoad
from loadtest.chaos_report import rich_table, verdict, write
from loadtest.report import REPORTS, machine_description

console = Console(width=None if Console().is_terminal else 220)
# Short sync interval: the final accounting waits for a sync after the drain; 2 s keeps runs short.
BASE_ENV = {"FAULTLINE_SYNC_INTERVAL": "2"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="make chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", default=[], metavar="FAULT",
                   help=f"run only these faults (repeat or comma-separate): {', '.join(FAULTS)}")
    p.add_argument("--clients", type=int, default=100, help="concurrent keep-alive clients (default 100)")
    p.add_argument("--think", type=float, default=0.1, help="pause between two posts of one client, s")
    p.add_argument("--quick", action="store_true", help="shorter phases and outages (a smoke run)")
    p.add_argument("--before", type=float, help="steady seconds before the fault (default 10, quick 4)")
    p.add_argument("--after", type=float, help="seconds under load after the fault (default 20, quick 8)")
    p.add_argument("--repeat", type=int, default=0, help="kills/reloads for the repeated faults (0 = default)")
    p.add_argument("--nodes", type=int, default=3, help="API nodes behind nginx")
    p.add_argument("--db", default="mariadb", help="mariadb (default; db-reject and mariadb-down need it) or sqlite")
    p.add_argument("--env", action="append", default=[], metavar="FAULTLINE_X=V", help="extra stack setting")
    p.add_argument("--keep", action="store_true", help="keep each stack's data directories (MariaDB, AOF, ...)")
    p.add_argument("--out", type=Path, default=REPORTS, help="report directory")
    args = p.parse_args(argv)
    names = [n.strip() for item in args.only for n in item.split(",") if n.strip()] or list(FAULTS)
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        p.error(f"unknown fault(s) {unknown}; choose from {list(FAULTS)}")
    if args.db != "mariadb" and {"db-reject", "mariadb-down"} & set(names):
        p.error("db-reject and mariadb-down need --db mariadb")
    args.faults = names
    args.before = args.before if args.before is not None else (4.0 if args.quick else 10.0)
    args.after = args.after if args.after is not None else (8.0 if args.quick else 20.0)
    return args


def run_fault(key: str, args: argparse.Namespace, base: Path, log: Any) -> dict[str, Any]:
    env = {**BASE_ENV, **dict(item.split("=", 1) for item in args.env)}
    title, inject = FAULTS[key]
    row: dict[str, Any] = {"fault_key": key, "fault": title, "started": datetime.now(UTC).isoformat(timespec="seconds")}
    t_start = time.monotonic()
    stack = chaos_stack.start_stack(base, log, env, nodes=args.nodes, db=args.db)
    phases = row["phase_s"] = {"start": round(time.monotonic() - t_start, 1)}
    supervisor = chaos_stack.Supervisor(stack, log).start()
    monitor = chaos_stack.QueueMonitor(stack).start()
    load = ChaosLoad(stack.url, stack.ingest_key, clients=args.clients, think=args.think).start()
    fault = Fault(stack, supervisor, load, log, quick=args.quick, repeat=args.repeat)
    try:
        t0 = time.monotonic()
        time.sleep(args.before)
        try:
            row["fault_wall"] = time.time()  # beside the clients' wall-clock tries (503-but-counted examples)
            inject(fault)
        except Exception as exc:  # a fault that could not be injected is a failed row, not a crash
            row["error"] = f"{type(exc).__name__}: {exc}"
            fault.end = fault.end or time.monotonic()
        time.sleep(args.after)
        load.settle(timeout=45.0)
        t_load_end = time.monotonic()
        phases["load_and_settle"] = round(t_load_end - t0, 1)
        settled, settle_s, unsettled = chaos_stack.wait_settled(stack, timeout=120.0)
        counts, no_details, sample_ids = chaos_stack.db_rows(stack)
        dead_records = chaos_stack.dead_letter_records(stack)
        monitor.stop()
        view = client_view(load.events)
        dead = dead_lettered_ids(dead_records, view["accepted"])
        row.update(account(view["accepted"], counts, dead, view["unknown"]))
        row.update(_requests(load, fault), refusals=dict(load.answers), settled=settled, settle_s=round(settle_s, 1),
                   left_in_redis=unsettled,
                   refused_but_counted=view["refused_but_counted"], dedup_misses=view["dedup_misses"],
                   refused_but_counted_examples=view["refused_but_counted_examples"],
                   unknown_outcome=sum(view["unknown"].values()), never_accepted=view["never_accepted"],
                   groups_without_details=no_details, dead_letter_records=len(dead_records),
                   # samples (the last few per group) of events no client was told 202 about
                   samples=len(sample_ids), samples_not_accepted=len(sample_ids - set(view["accepted"])),
                   fault_s=round(fault.end - fault.start, 1), run_s=round(t_load_end - t0, 1),
                   first_202_s=_first_202(load, fault.end), empty_queue_s=_empty_queue(monitor, t0, fault),
                   info=fault.info,
                   supervisor_errors=supervisor.errors, restarts=chaos_stack.worker_restarts(stack))
        row["worker_restarts"] = row["restarts"]["worker"]
    finally:
        load.settle(timeout=0)  # no-op after a normal run; stops the clients after an exception
        monitor.stop()
        supervisor.stop()
        t_stop = time.monotonic()
        stack.stop()
        phases["stop"] = round(time.monotonic() - t_stop, 1)
        if not args.keep:  # ~150 MB per stack (MariaDB's files); the logs are in stack.log
            shutil.rmtree(base, ignore_errors=True)
    row["verdict"] = verdict(row)
    row["details"] = (f"{row.get('info')}; settled={row.get('settled')} in {row.get('settle_s')} s "
                      f"(left: {row.get('left_in_redis')}); "
                      f"503-but-counted={row.get('refused_but_counted')}; dedup misses={row.get('dedup_misses')}; "
                      f"requests > 1 s={row.get('slow_requests')} (max {row.get('max_latency_s')} s); "
                      f"restarts={row.get('restarts')}; "
                      f"refusals={row.get('refusals')}; phases={phases}")
    return row


def _requests(load: ChaosLoad, fault: Fault) -> dict[str, Any]:
    reqs = list(load.requests)
    statuses = [r.status for r in reqs]
    during = [r for r in reqs if fault.start <= r.start <= fault.end]
    return {"requests": len(reqs), "s202": statuses.count(202), "s429": statuses.count(429),
            "s503": statuses.count(503), "conn": statuses.count(TRANSPORT),
            "other": sum(1 for s in statuses if s not in (202, 429, 503, TRANSPORT)),
            "slow_requests": sum(1 for r in reqs if r.latency > 1.0),
            "slow_during_fault": sum(1 for r in during if r.latency > 1.0),
            "max_latency_s": round(max((r.latency for r in reqs), default=0.0), 2),
            "other_statuses": sorted({s for s in statuses if s not in (202, 429, 503, TRANSPORT)})}


def _first_202(load: ChaosLoad, end: float) -> float | None:
    done = [r.start + r.latency for r in list(load.requests) if r.status == 202 and r.start + r.latency >= end]
    return round(min(done) - end, 2) if done else None


def _empty_queue(monitor: chaos_stack.QueueMonitor, t0: float, fault: Fault) -> float | None:
    """Seconds from the fault's end until the queue is back to its steady level: at most the 90th
    percentile depth of the steady phase before the fault (under constant load it is rarely exactly 0)."""
    steady = sorted(d for t, d in monitor.samples if t0 + 1 <= t <= fault.start and d is not None)
    level = steady[int(0.9 * (len(steady) - 1))] if steady else 0
    for t, depth in monitor.samples:
        if t >= fault.end and depth is not None and depth <= level:
            return round(t - fault.end, 2)
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "make chaos ARGS=" + shlex.quote(" ".join(sys.argv[1:] if argv is None else argv))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = args.out / f"chaos-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]{command}[/]: {args.clients} clients, faults: {', '.join(args.faults)}")
    rows: list[dict[str, Any]] = []
    with (work / "stack.log").open("w") as logf:
        def log(line: str) -> None:
            logf.write(line + "\n")
            logf.flush()

        for key in args.faults:
            with console.status(f"{key}: starting a fresh stack, load, fault, recovery, accounting ..."):
                log(f"===== {key} =====")
                try:
                    row = run_fault(key, args, work / key, log)
                except Exception as exc:  # the stack would not start or could not be read: a failed row
                    error = f"{type(exc).__name__}: {exc}"
                    row = {"fault_key": key, "fault": FAULTS[key][0], "error": error, "verdict": f"FAIL: {error}",
                           "details": error}
            rows.append(row)
            console.print(f"  {key}: {row['verdict']}  ({row['details']})")
    notes = ["Columns: requests = every HTTP attempt (re-sends included); conn err = no HTTP answer; accepted = "
             "distinct event ids answered 202; > 1 s = requests slower than 1 s; "
             "lost / duplicated = per group, DB count vs accepted; dead-lettered "
             "= accepted events found in the dead-letter list; s to empty queue = until the queue is back to its "
             "pre-fault level; worker restarts = by the supervisor.",
             f"Stack logs: {work / 'stack.log'}"]
    machine = machine_description()
    console.print(rich_table(rows, command))
    md, js = write(args.out, f"chaos-{stamp}", rows, command, machine, notes)
    console.print(f"report: {md}\n        {js}")
    return 0 if all(r["verdict"] == "OK" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
