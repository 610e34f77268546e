"""The live line of a long run: elapsed time, users, req/s, p95, errors (from locust's history CSV).

Locust flushes its CSV every 5 s, so the figures move in 5 s steps while the elapsed time ticks each second.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Snapshot:
    users: int = 0
    rps: float = 0.0
    p95_ms: float = 0.0
    requests: int = 0
    failures: int = 0


def last_aggregated(history_csv: Path) -> Snapshot:
    """The latest "Aggregated" row of locust's <prefix>_stats_history.csv (empty if not written yet)."""
    if not history_csv.exists():
        return Snapshot()
    last: dict[str, str] | None = None
    with history_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("Name") == "Aggregated":
                last = row
    if last is None:
        return Snapshot()

    def num(key: str) -> float:
        try:
            return float(last.get(key) or 0)  # type: ignore[union-attr]
        except ValueError:  # "N/A" before the first request
            return 0.0

    return Snapshot(users=int(num("User Count")), rps=num("Requests/s"), p95_ms=num("95%"),
                    requests=int(num("Total Request Count")), failures=int(num("Total Failure Count")))


def line(label: str, elapsed: float, total: float, snap: Snapshot, extra: str = "") -> str:
    errors = f"{snap.failures} ({100 * snap.failures / snap.requests:.2f}%)" if snap.requests else "0"
    return (f"[bold]{label}[/] {elapsed:5.0f}/{total:.0f}s  users {snap.users:5d}  {snap.rps:7.1f} req/s  "
            f"p95 {snap.p95_ms:7.1f} ms  errors {errors}  {extra}")
