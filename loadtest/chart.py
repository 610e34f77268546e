"""PNG chart of a load test: latency vs users per target (left), p95 over time with users (right)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt


def draw(scenario: str, series: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]], path: Path) -> Path:
    """series: per target, its per-stage rows (users, p95, p99) and its 10 s windows (t, p95, users, count)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for name, (rows, all_windows) in series.items():
        users = [r["users"] for r in rows]
        (p95_line,) = left.plot(users, [r["p95"] for r in rows], marker="o", label=f"{name} p95")
        left.plot(users, [r["p99"] for r in rows], marker="x", linestyle="--", color=p95_line.get_color(),
                  label=f"{name} p99")
        windows = [w for w in all_windows if w.get("count")]
        right.plot([w["t"] for w in windows], [w["p95"] for w in windows], color=p95_line.get_color(),
                   label=f"{name} p95 (10 s windows)")
    left.set(xlabel="users (each posts, then waits 1 s)", ylabel="latency (ms, log)", yscale="log",
             title=f"{scenario}: latency vs users")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    right.set(xlabel="seconds since start", ylabel="p95 (ms, log)", yscale="log", title="p95 over time")
    right.grid(True, which="both", alpha=0.3)
    first = next(iter(series.values()))[1]
    twin = right.twinx()
    twin.plot([w["t"] for w in first], [w["users"] for w in first],
              color="grey", alpha=0.4, label="users")
    twin.set_ylabel("users")
    right.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
