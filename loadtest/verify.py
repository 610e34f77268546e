"""After a run: does the database hold exactly what was accepted?

Ours: every 2xx answer that was not a duplicate names its group's fingerprint; once the queue is drained
and a count sync has run, error_groups.count must equal those tallies group by group. The baseline has
no event ids, so its check is the total: rows' counts vs 2xx answers (its read-modify-write loses some).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from loadtest import targets


async def _fetch(url: str, query: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text(query))).all())
    finally:
        await engine.dispose()


def db_counts(database_url: str) -> dict[str, int]:
    rows = asyncio.run(_fetch(database_url, "SELECT fingerprint, count FROM error_groups"))
    return {str(fp): int(n) for fp, n in rows}


def compare(accepted: dict[str, int], db: dict[str, int], unknown: int = 0) -> dict[str, Any]:
    """Group by group. `unknown`: events whose every attempt failed, so the client cannot know whether the
    server counted them; the DB may hold up to that many more (never fewer) and still be right."""
    groups = set(accepted) | set(db)
    pairs = {fp: (accepted.get(fp, 0), db.get(fp, 0)) for fp in groups}
    wrong = {fp: pair for fp, pair in pairs.items() if pair[0] != pair[1]}
    extra = sum(d - a for a, d in wrong.values())
    explained = bool(wrong) and all(d >= a for a, d in wrong.values()) and extra <= unknown
    return {"accepted": sum(accepted.values()), "in_db": sum(db.values()), "groups": len(groups),
            "groups_wrong": len(wrong), "exact": not wrong, "unknown_outcome": unknown,
            "within_unknown": explained, "examples": dict(list(wrong.items())[:5])}


def verify_ours(stack: Any, accepted: dict[str, int], unknown: int = 0, timeout: float = 60.0) -> dict[str, Any]:
    """Wait for the workers and the next count syncs, then compare group by group."""
    start = time.monotonic()
    targets.wait_drained(stack, timeout)
    result = compare(accepted, db_counts(stack.database_url), unknown)
    while not (result["exact"] or result["within_unknown"]) and time.monotonic() - start < timeout:
        time.sleep(1.0)
        result = compare(accepted, db_counts(stack.database_url), unknown)
    result["waited_s"] = round(time.monotonic() - start, 1)
    return result


def verify_baseline(baseline: Any, ok: int) -> dict[str, Any]:
    rows = asyncio.run(_fetch(baseline.database_url, "SELECT COALESCE(SUM(count), 0) FROM naive_errors"))
    in_db = int(rows[0][0])
    return {"accepted": ok, "in_db": in_db, "exact": in_db == ok, "lost": ok - in_db,
            "lost_pct": round(100 * (ok - in_db) / ok, 2) if ok else 0.0}
