"""Pure helpers shared by the locust process and the reports: status classes and latency percentiles."""

from __future__ import annotations

from collections.abc import Sequence


def classify(status: int) -> str:
    """ok / 429 / 5xx / conn (no HTTP answer: refused, reset, client timeout) / other (4xx but 429)."""
    if 200 <= status < 300:
        return "ok"
    if status == 429:
        return "429"
    if status >= 500:
        return "5xx"
    if status == 0:
        return "conn"
    return "other"


def summary(values: Sequence[float]) -> dict[str, float]:
    """Nearest-rank percentiles (ms) of one stage or window; {"count": 0} when empty."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    n = len(ordered)

    def pct(p: float) -> float:
        return ordered[min(n - 1, int(p / 100 * n))]

    return {"count": n, "p50": pct(50), "p95": pct(95), "p99": pct(99), "p999": pct(99.9), "max": ordered[-1]}
