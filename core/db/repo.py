"""Idempotent writes. Every function here can run twice with the same input and change nothing more.

Rows are sorted by primary key before each multi-row upsert so concurrent writers take row locks in the
same order (no deadlock between two workers touching the same groups). The batch writer's group and sample
writes are prepared SQL text (core/db/bulk.py, re-exported here).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from sqlalchemy import Table, delete, select, tuple_
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from core.access import key_hash, key_hint
from core.db import bulk
from core.db.bulk import insert_samples as insert_samples  # re-exported: the batch writer's statements
from core.db.bulk import upsert_groups as upsert_groups
from core.db.models import AppliedBatch, ErrorGroup, GroupHour, Project, ProjectKey

_groups: Table = ErrorGroup.__table__  # type: ignore[assignment]
_batches: Table = AppliedBatch.__table__  # type: ignore[assignment]
_projects: Table = Project.__table__  # type: ignore[assignment]
_keys: Table = ProjectKey.__table__  # type: ignore[assignment]
_hours: Table = GroupHour.__table__  # type: ignore[assignment]
PRUNE_CHUNK = 5000  # rows per DELETE of old hour buckets: a short lock each, not one long one

# MySQL/MariaDB errors worth retrying as they are: 1205 lock wait timeout, 1213 deadlock (also Galera's
# certification failure), 1047 a Galera node not in the primary component ("WSREP has not yet prepared node
# for application use"), 2002/2003/2006/2013 connection lost or refused, 1049/1146 a database or table not
# there yet: a first start whose `faultline migrate` is still to come or running, which processes ride out
# (core/db/migrate.py require_current_schema); the scheduler gave up on it and died in a test that started
# its processes beside the migration.
_TRANSIENT_MYSQL = {1047, 1049, 1146, 1205, 1213, 2002, 2003, 2006, 2013}
# Connection gone (2006/2013), or on a Galera node that left the primary component (1047), which
# core/db/engine.py turns into a dropped connection so that the next one goes to another node.
_LOST_CONNECTION = {1047, 2006, 2013}


def error_code(exc: BaseException) -> int | None:
    """The server's (or driver's) numeric error code of a DB error, e.g. 1213; None if it has none."""
    orig = getattr(exc, "orig", None)
    code = orig.args[0] if orig is not None and getattr(orig, "args", None) else None
    return code if isinstance(code, int) else None


def is_transient(exc: BaseException) -> bool:
    """True for 'the database is unavailable or busy' (retry forever), False for 'this data is bad'."""
    if isinstance(exc, (OSError, TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or error_code(exc) in _TRANSIENT_MYSQL:
            return True
        text = str(exc.orig).lower()
        return any(s in text for s in ("database is locked", "can't connect", "lost connection",
                                       "connection refused", "gone away", "unable to open", "no such table"))
    return False


def is_lock_conflict(exc: BaseException) -> bool:
    """MySQL/MariaDB deadlock or Galera certification failure (1213), lock wait timeout (1205): the server
    rolled the whole transaction back."""
    return error_code(exc) in (1205, 1213)


def is_lost_connection(exc: BaseException) -> bool:
    """The connection died under the transaction (a DB node killed or restarted, a network cut): the pool
    has dropped it, and a new connection may reach another node (core/db/failover.py)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return error_code(exc) in _LOST_CONNECTION


def _is_mysql(conn: AsyncConnection) -> bool:
    return conn.dialect.name in ("mysql", "mariadb")


async def apply_count_batch(conn: AsyncConnection, batch_id: str, deltas: Mapping[str, int],
                            hours: Mapping[tuple[int, str, int], int] | None = None) -> bool:
    """Add one batch of count deltas (and its hour buckets), exactly once. Returns False if the ledger says
    it was applied.

    Must run inside the caller's transaction: the ledger row, the counts and the buckets commit together.
    """
    return (await apply_count_batches(conn, [(batch_id, deltas, hours)]))[0]


CountBatch = tuple[str, Mapping[str, int], Mapping[tuple[int, str, int], int] | None]  # id, deltas, hours


async def apply_count_batches(conn: AsyncConnection, batches: Sequence[CountBatch]) -> list[bool]:
    """Several batches in the caller's ONE transaction (every key shard's on one server, workers/sync.py): a
    ledger row each, then the deltas of those not applied before, summed, in one upsert (a group's overflow
    counts can sit in several shards' batches). Per batch: False if the ledger says it was applied."""
    applied: list[bool] = []
    counts: dict[str, int] = {}
    hour_counts: dict[tuple[int, str, int], int] = {}
    for batch_id, deltas, hours in batches:
        try:
            async with conn.begin_nested():
                await conn.execute(_batches.insert().values(
                    batch_id=batch_id, applied_at=time.time(), events=sum(deltas.values())))
        except IntegrityError:
            applied.append(False)
            continue
        applied.append(True)
        for fp, n in deltas.items():
            counts[fp] = counts.get(fp, 0) + n
        for hour, n in (hours or {}).items():
            hour_counts[hour] = hour_counts.get(hour, 0) + n
    await bulk.add_hours(conn, hour_counts)
    await bulk.add_counts(conn, counts)
    return applied


async def prune_hours(conn: AsyncConnection, before_hour: int) -> int:
    """Delete up to PRUNE_CHUNK hour buckets older than `before_hour`; returns how many went."""
    doomed = select(_hours.c.project_id, _hours.c.fingerprint, _hours.c.hour).where(
        _hours.c.hour < before_hour).limit(PRUNE_CHUNK)
    rows = list(await conn.execute(doomed))
    if not rows:
        return 0
    keys = [tuple(r) for r in rows]
    await conn.execute(delete(_hours).where(
        tuple_(_hours.c.project_id, _hours.c.fingerprint, _hours.c.hour).in_(keys)))
    return len(rows)


async def prune_batches(conn: AsyncConnection, older_than: float) -> None:
    await conn.execute(delete(_batches).where(_batches.c.applied_at < older_than))


async def projects_by_key(conn: AsyncConnection) -> dict[str, int]:
    """key hash -> project id, for every live key."""
    rows = await conn.execute(select(ProjectKey.key_hash, ProjectKey.project_id))
    return {digest: pid for digest, pid in rows}


class KeyConflict(ValueError):
    """The key is already a key of another project."""


async def project_id(conn: AsyncConnection, name: str) -> int | None:
    found = (await conn.execute(select(Project.id).where(Project.name == name))).scalar()
    return None if found is None else int(found)


async def owner_of_key(conn: AsyncConnection, key: str) -> tuple[int, str] | None:
    row = (await conn.execute(select(Project.id, Project.name).join(ProjectKey, ProjectKey.project_id == Project.id)
                              .where(ProjectKey.key_hash == key_hash(key)))).first()
    return None if row is None else (int(row[0]), str(row[1]))


async def add_key(conn: AsyncConnection, pid: int, key: str) -> None:
    await conn.execute(_keys.insert().values(project_id=pid, key_hash=key_hash(key), hint=key_hint(key),
                                             created_at=time.time()))


async def ensure_project(conn: AsyncConnection, name: str, ingest_key: str) -> tuple[int, str]:
    """The project called `name` (created if new) with `ingest_key` among its keys (added if missing).

    Returns (id, ingest_key): the key given always works afterwards. Raises KeyConflict if the key is
    already another project's.
    """
    owner = await owner_of_key(conn, ingest_key)
    pid = await project_id(conn, name)
    if owner is not None:
        if owner[1] != name:
            raise KeyConflict(f"this key is already a key of project {owner[1]!r}, not of {name!r}")
        return owner[0], ingest_key
    if pid is None:
        result = await conn.execute(_projects.insert().values(name=name, created_at=time.time()))
        pid = int(result.inserted_primary_key[0])  # type: ignore[index]
    await add_key(conn, pid, ingest_key)
    return pid, ingest_key


async def list_projects(conn: AsyncConnection) -> list[tuple[int, str, float, list[str]]]:
    """(id, name, created_at, key hints) for every project."""
    hints: dict[int, list[str]] = {}
    for pid, hint in await conn.execute(select(ProjectKey.project_id, ProjectKey.hint).order_by(ProjectKey.id)):
        hints.setdefault(int(pid), []).append(str(hint))
    rows = await conn.execute(select(Project.id, Project.name, Project.created_at).order_by(Project.id))
    return [(int(i), str(n), float(c), hints.get(int(i), [])) for i, n, c in rows]


async def revoke_keys_except(conn: AsyncConnection, pid: int, keep: str) -> int:
    result = await conn.execute(delete(_keys).where(_keys.c.project_id == pid, _keys.c.key_hash != key_hash(keep)))
    return int(getattr(result, "rowcount", 0) or 0)


async def delete_project(conn: AsyncConnection, pid: int) -> None:
    """The project and its keys (its keys stop working); its groups stay in the DB for the record."""
    await conn.execute(delete(_keys).where(_keys.c.project_id == pid))
    await conn.execute(delete(_projects).where(_projects.c.id == pid))
