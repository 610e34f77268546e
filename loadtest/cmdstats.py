"""Redis's own accounting of a bench case: `INFO commandstats` deltas (calls and µs per command) per event.

Why: the bench's Redis CPU per event is one noisy figure (the process's CPU on a shared 2-core machine);
the calls each command was run and the µs Redis counted inside it are counted by Redis itself, so two
cases of one run (1 key shard vs 16) show WHICH commands the difference is made of. Commands run inside a
script are counted under their own name too (and their time again inside EVALSHA's): read `evalsha` as the
scripts' whole time and the rest as where it went.
"""

from __future__ import annotations

from typing import Any

import redis as redis_sync

Stats = dict[str, tuple[int, int]]  # command -> (calls, usec)


def snapshot(target: Any) -> Stats | None:
    """The command counters of the target's Redis now (None: the target has no Redis of ours)."""
    if not hasattr(target, "settings"):
        return None
    client = redis_sync.Redis.from_url(target.settings().redis_url)
    try:
        info: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): (int(v.get("calls", 0)), int(v.get("usec", 0)))
            for name, v in info.items()}


def delta(before: Stats | None, after: Stats | None) -> Stats:
    if before is None or after is None:
        return {}
    out: Stats = {}
    for name, (calls, usec) in after.items():
        c0, u0 = before.get(name, (0, 0))
        if calls - c0 > 0:
            out[name] = (calls - c0, usec - u0)
    return out


def compare_rows(one: Stats, one_events: int, many: Stats, many_events: int, label: str,
                 limit: int = 14) -> list[list[str]]:
    """Per command, calls and µs per event in both cases and the µs difference, largest difference first
    (the commands that make most of the gap between them)."""
    if not one or not many or not one_events or not many_events:
        return []
    rows = [["command", "calls/event (1)", f"calls/event ({label})", "µs/event (1)", f"µs/event ({label})",
             "µs/event diff"]]
    names = set(one) | set(many)

    def per(stats: Stats, name: str, events: int) -> tuple[float, float]:
        calls, usec = stats.get(name, (0, 0))
        return calls / events, usec / events

    ranked = sorted(names, key=lambda n: -abs(per(many, n, many_events)[1] - per(one, n, one_events)[1]))
    for name in ranked[:limit]:
        c1, u1 = per(one, name, one_events)
        cn, un = per(many, name, many_events)
        rows.append([name, f"{c1:.3f}", f"{cn:.3f}", f"{u1:.2f}", f"{un:.2f}", f"{un - u1:+.2f}"])
    return rows


def case_rows(stats: Stats, events: int, limit: int = 12) -> list[list[str]]:
    """One case's commands by Redis µs per event, largest first (`make bench --only ...`: which commands a
    case's Redis time is made of, e.g. the batch path's per-event dedup calls)."""
    if not stats or not events:
        return []
    rows = [["command", "calls/event", "µs/event", "µs/call"]]
    for name, (calls, usec) in sorted(stats.items(), key=lambda kv: -kv[1][1])[:limit]:
        rows.append([name, f"{calls / events:.3f}", f"{usec / events:.2f}", f"{usec / calls:.2f}"])
    return rows
