"""Idempotent writes. Every function here can run twice with the same input and change nothing more.

Rows are sorted by primary key before each multi-row upsert so concurrent writers take row locks in the
same order (no deadlock between two workers touching the same groups).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Table, delete, func, select
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from core.db.models import AppliedBatch, ErrorGroup, Project, Sample

_groups: Table = ErrorGroup.__table__  # type: ignore[assignment]
_samples: Table = Sample.__table__  # type: ignore[assignment]
_batches: Table = AppliedBatch.__table__  # type: ignore[assignment]
_projects: Table = Project.__table__  # type: ignore[assignment]

# MySQL/MariaDB errors worth retrying as they are: 1205 lock wait timeout, 1213 deadlock,
# 2002/2003/2006/2013 connection lost or refused.
_TRANSIENT_MYSQL = {1205, 1213, 2002, 2003, 2006, 2013}


def is_transient(exc: BaseException) -> bool:
    """True for 'the database is unavailable or busy' (retry forever), False for 'this data is bad'."""
    if isinstance(exc, (OSError, TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        code = orig.args[0] if orig is not None and orig.args else None
        if isinstance(code, int) and code in _TRANSIENT_MYSQL:
            return True
        text = str(orig).lower()
        return any(s in text for s in ("database is locked", "can't connect", "lost connection",
                                       "connection refused", "gone away", "unable to open"))
    return False


def is_lock_conflict(exc: BaseException) -> bool:
    """MySQL/MariaDB deadlock (1213) or lock wait timeout (1205): the transaction was rolled back."""
    orig = getattr(exc, "orig", None)
    code = orig.args[0] if orig is not None and getattr(orig, "args", None) else None
    return code in (1205, 1213)


def _is_mysql(conn: AsyncConnection) -> bool:
    return conn.dialect.name in ("mysql", "mariadb")


async def upsert_groups(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Create groups or widen their first/last seen; fill placeholder columns; never touch `count`."""
    if not rows:
        return
    rows = sorted(rows, key=lambda r: r["fingerprint"])
    values = [{**r, "count": 0} for r in rows]
    if _is_mysql(conn):
        m = mysql.insert(_groups).values(values)
        new = m.inserted
        least, greatest = func.least, func.greatest
        stmt: Any = m.on_duplicate_key_update(
            project_id=func.coalesce(_groups.c.project_id, new.project_id),
            message=func.coalesce(_groups.c.message, new.message),
            error_type=func.coalesce(_groups.c.error_type, new.error_type),
            service=func.coalesce(_groups.c.service, new.service),
            level=func.coalesce(_groups.c.level, new.level),
            first_seen=least(func.coalesce(_groups.c.first_seen, new.first_seen), new.first_seen),
            last_seen=greatest(func.coalesce(_groups.c.last_seen, new.last_seen), new.last_seen),
        )
    else:
        s = sqlite.insert(_groups).values(values)
        new = s.excluded
        # SQLite's multi-argument min()/max() are scalar functions, like LEAST/GREATEST.
        stmt = s.on_conflict_do_update(
            index_elements=[_groups.c.fingerprint],
            set_={
                "project_id": func.coalesce(_groups.c.project_id, new.project_id),
                "message": func.coalesce(_groups.c.message, new.message),
                "error_type": func.coalesce(_groups.c.error_type, new.error_type),
                "service": func.coalesce(_groups.c.service, new.service),
                "level": func.coalesce(_groups.c.level, new.level),
                "first_seen": func.min(func.coalesce(_groups.c.first_seen, new.first_seen), new.first_seen),
                "last_seen": func.max(func.coalesce(_groups.c.last_seen, new.last_seen), new.last_seen),
            },
        )
    await conn.execute(stmt)


async def insert_samples(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        return
    rows = sorted(rows, key=lambda r: r["event_id"])
    if _is_mysql(conn):
        stmt: Any = mysql.insert(_samples).values(list(rows)).prefix_with("IGNORE")
    else:
        stmt = sqlite.insert(_samples).values(list(rows)).on_conflict_do_nothing()
    await conn.execute(stmt)


async def apply_count_batch(conn: AsyncConnection, batch_id: str, deltas: Mapping[str, int]) -> bool:
    """Add one batch of count deltas, exactly once. Returns False if the ledger says it was applied.

    Must run inside the caller's transaction: the ledger row and the counts commit together.
    """
    try:
        async with conn.begin_nested():
            await conn.execute(_batches.insert().values(
                batch_id=batch_id, applied_at=time.time(), events=sum(deltas.values())))
    except IntegrityError:
        return False
    rows = [{"fingerprint": fp, "count": n} for fp, n in sorted(deltas.items()) if n]
    if not rows:
        return True
    if _is_mysql(conn):
        m = mysql.insert(_groups).values(rows)
        stmt: Any = m.on_duplicate_key_update(count=_groups.c.count + m.inserted.count)
    else:
        s = sqlite.insert(_groups).values(rows)
        stmt = s.on_conflict_do_update(index_elements=[_groups.c.fingerprint],
                                       set_={"count": _groups.c.count + s.excluded.count})
    await conn.execute(stmt)
    return True


async def prune_samples(conn: AsyncConnection, keep: int) -> int:
    """Keep the newest `keep` samples of each group (window function: MariaDB >= 10.2, SQLite >= 3.25)."""
    ranked = select(
        Sample.id, func.row_number().over(partition_by=Sample.fingerprint, order_by=Sample.id.desc()).label("rn")
    ).subquery()
    doomed = select(ranked.c.id).where(ranked.c.rn > keep)
    # MySQL refuses a subquery on the table being deleted from unless it is materialised: wrap it once more.
    doomed_ids = select(doomed.subquery().c.id)
    result = await conn.execute(delete(_samples).where(_samples.c.id.in_(doomed_ids)))
    return int(getattr(result, "rowcount", 0) or 0)


async def prune_batches(conn: AsyncConnection, older_than: float) -> None:
    await conn.execute(delete(_batches).where(_batches.c.applied_at < older_than))


async def projects_by_key(conn: AsyncConnection) -> dict[str, int]:
    rows = await conn.execute(select(Project.ingest_key, Project.id))
    return {key: pid for key, pid in rows}


async def ensure_project(conn: AsyncConnection, name: str, ingest_key: str) -> tuple[int, str]:
    """The project called `name`, created with `ingest_key` if new. Returns (id, its actual key)."""
    existing = (await conn.execute(select(Project.id, Project.ingest_key).where(Project.name == name))).first()
    if existing is not None:
        return int(existing[0]), str(existing[1])
    result = await conn.execute(_projects.insert().values(
        name=name, ingest_key=ingest_key, created_at=time.time()))
    return int(result.inserted_primary_key[0]), ingest_key  # type: ignore[index]


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
