"""The report of a partial `make bench --only ...` run: its cases' own figures, none compared to absent cases.

Per case: CPU seconds per role until drained, µs per accepted event per role (wrk's own too: it shares the
cores), and the Redis commands its time is made of (INFO commandstats); the shard table when both shard
cases ran; batch events/s / floor req/s when both of those did (issue 15's target, same run).
"""

from __future__ import annotations

import argparse
from typing import Any

from loadtest.cmdstats import case_rows
from loadtest.procstats import grouped_cores
from loadtest.report import SHARDED, _per, markdown_table, shard_command_section, shard_section


def partial_markdown(chosen: dict[str, Any], args: argparse.Namespace, machine: str) -> str:
    """`make bench --only ...`: the shard table when both of its cases ran, and every case's CPU per role."""
    sections = []
    if "ingest" in chosen and SHARDED in chosen:
        sections = [shard_section(chosen), *shard_command_section(chosen)]
    roles = sorted({r for res in chosen.values() for r in grouped_cores(res["cpu_s_drained"])})
    rows = [["case", "req/s", "accepted", *(f"{r} CPU s" for r in roles)]]
    for name, res in chosen.items():
        per_role = grouped_cores(res["cpu_s_drained"])
        rows.append([name, f"{res['wrk'].rps:,.0f}", f"{res['wrk'].accepted_events or res['wrk'].ok:,}",
                     *(f"{per_role.get(r, 0.0):.2f}" for r in roles)])
    sections.append(("CPU seconds per role until drained", rows))
    for name, res in chosen.items():  # µs per accepted event per role, and the Redis commands it is made of
        events = res["wrk"].accepted_events or res["wrk"].ok
        per_role = grouped_cores(res["cpu_s_drained"])
        sections.append((f"{name}: CPU µs per event until drained (wrk: its own), Redis commandstats",
                         [["case", "events", *(f"{r} µs" for r in roles), "wrk µs"],
                          [name, f"{events:,}", *(f"{_per(per_role.get(r, 0.0), events):.1f}" for r in roles),
                           f"{_per(res['wrk'].generator_cores * res['wrk'].seconds, events):.1f}"]]))
        if rows_ := case_rows(res.get("commandstats", {}), events):
            sections.append((f"{name}: Redis commandstats per event (script commands counted inside evalsha too)",
                             rows_))
    if "batch" in chosen and "floor" in chosen and chosen["floor"]["wrk"].rps:
        ratio = chosen["batch"]["wrk"].events_per_s / chosen["floor"]["wrk"].rps
        sections.append(("batch events/s / floor req/s (target >= 4)",
                         [["case", "ratio"], ["batch / floor", f"{ratio:.2f}"]]))
    parts = [f"# make bench --only {args.only}\n\n{machine}\n"]
    parts += [f"## {title}\n\n{markdown_table(rows[0], rows[1:])}\n" for title, rows in sections]
    return "\n".join(parts)
