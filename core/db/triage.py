"""SQL of group states (core/triage.py says what the states mean).

Every change is a compare-and-set on (state, state_changed_at): of two workers that both saw a resolved
group get an event, one UPDATE matches and the other (blocked on the row lock, then re-reading it) matches
nothing, so a transition happens, and is signalled, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, Table, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from core.db.models import ErrorGroup

_groups: Table = ErrorGroup.__table__  # type: ignore[assignment]
_g = _groups.c


_CANDIDATE_COLUMNS = ("fingerprint", "project_id", "service", "state", "state_changed_at", "ignore_until",
                      "ignore_until_count", "signal_pending", "count")


async def reopen_candidates(conn: AsyncConnection, fingerprints: Sequence[str]) -> list[Row[Any]]:
    """Groups of a batch that an event may reopen, or whose last reopen is not yet known to be signalled.
    A primary-key lookup that finds nothing for the usual batch (every group unresolved). SQL text, as the
    writer's other statements (core/db/bulk.py): it runs once per batch, and building and compiling a
    select with an IN list cost more than the lookup itself."""
    if not fingerprints:
        return []
    mark = "?" if conn.dialect.name == "sqlite" else "%s"
    sql = (f"SELECT {', '.join(_CANDIDATE_COLUMNS)} FROM {_groups.name} "
           f"WHERE fingerprint IN ({', '.join([mark] * len(fingerprints))}) "
           f"AND (state != 'unresolved' OR signal_pending = 1)")
    return list(await conn.exec_driver_sql(sql, tuple(sorted(fingerprints))))


def _same(column: Any, value: Any) -> Any:
    return column.is_(None) if value is None else column == value


async def reopen(conn: AsyncConnection, row: Row[Any], at_ms: int) -> bool:
    """Make the group unresolved + regressed if it is still as `row` saw it; True if this call did."""
    result = await conn.execute(update(_groups).where(
        _g.fingerprint == row.fingerprint, _g.state == row.state, _same(_g.state_changed_at, row.state_changed_at),
    ).values(state="unresolved", regressed=True, signal_pending=True, state_changed_at=at_ms / 1000,
             ignore_until=None, ignore_until_count=None))
    return bool(getattr(result, "rowcount", 0))


async def signalled(conn: AsyncConnection, fingerprint: str, at_ms: int) -> None:
    """The transition at `at_ms` is on the signal stream: stop re-sending it."""
    await conn.execute(update(_groups).where(
        _g.fingerprint == fingerprint, _g.state_changed_at == at_ms / 1000).values(signal_pending=False))


async def set_state(conn: AsyncConnection, fingerprint: str, state: str, at: float,
                    ignore_until: float | None = None, ignore_until_count: int | None = None) -> Row[Any] | None:
    """A person's change: the new state, the regressed flag cleared (and a regression signal a crashed
    worker left unsent is dropped: someone has looked at the group). Returns the row after it, None if no
    such group."""
    await conn.execute(update(_groups).where(_g.fingerprint == fingerprint).values(
        state=state, regressed=False, signal_pending=False, state_changed_at=at, ignore_until=ignore_until,
        ignore_until_count=ignore_until_count))
    return (await conn.execute(select(_groups).where(_g.fingerprint == fingerprint))).first()
