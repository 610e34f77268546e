"""The batch writer's two statements as fixed SQL text per dialect, run as one executemany each.

Why not SQLAlchemy's `insert(...).values([...])`: a multi-row VALUES is a new statement for every batch
size, so SQLAlchemy compiled it again for every batch, one bind parameter per value (9 per group, 4 per
sample): py-spy under `make bench` put ~40 % of a worker's busy time in the compiler. Here the text is
written once; asyncmy's executemany turns `INSERT ... VALUES (%s, ...) ON DUPLICATE KEY UPDATE ...` into
one multi-row statement by escaping the values in C (split only past ~1 MB), and sqlite3's executemany
runs the prepared statement once per row. Same rows, same locks, same idempotence as before:

- groups: create, or widen first/last seen and fill the NULL columns of a count-only placeholder (the
  count sync may have created the row first); `count` is never changed here (workers/sync.py owns it);
- samples: insert, ignoring an event id already stored (a redelivered batch).

Long text goes to MariaDB as a hex literal (`Utf8Hex`): asyncmy escapes a str by `str.translate` with a list
table, ~40 µs for a 330-byte event payload (it always holds `"`), which py-spy put at ~20 % of a busy worker
(loadtest/worker_cpu.py); `bytes.hex()` is ~100 times faster, and `_utf8mb4 X'...'` needs no escaping at
all, so it means the same whatever the server's sql_mode (NO_BACKSLASH_ESCAPES) says.

Rows are sorted by primary key first, so two workers touching the same groups lock them in one order.
MariaDB gets the `VALUES(col)` form of ON DUPLICATE KEY UPDATE (MySQL 8 still accepts it). Each
assignment reads only its own column, so MySQL's left-to-right evaluation of assignments cannot matter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from asyncmy import converters
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from core.db.models import ErrorGroup, GroupHour, Sample

_groups: Table = ErrorGroup.__table__  # type: ignore[assignment]
_samples: Table = Sample.__table__  # type: ignore[assignment]
_hours: Table = GroupHour.__table__  # type: ignore[assignment]

GROUP_COLUMNS = ("fingerprint", "project_id", "message", "error_type", "service", "level", "first_seen",
                 "last_seen", "count")
SAMPLE_COLUMNS = ("event_id", "fingerprint", "received_at", "payload")
_FILLED = ("project_id", "message", "error_type", "service", "level")  # kept once set, filled when NULL


def _mysql_groups() -> str:
    sets = [f"{c} = COALESCE({c}, VALUES({c}))" for c in _FILLED]
    sets += ["first_seen = LEAST(COALESCE(first_seen, VALUES(first_seen)), VALUES(first_seen))",
             "last_seen = GREATEST(COALESCE(last_seen, VALUES(last_seen)), VALUES(last_seen))"]
    return (f"INSERT INTO {_groups.name} ({', '.join(GROUP_COLUMNS)}) "
            f"VALUES ({', '.join(['%s'] * len(GROUP_COLUMNS))}) ON DUPLICATE KEY UPDATE {', '.join(sets)}")


def _sqlite_groups() -> str:
    t = _groups.name
    sets = [f"{c} = COALESCE({t}.{c}, excluded.{c})" for c in _FILLED]
    # SQLite's multi-argument min()/max() are scalar functions, like LEAST/GREATEST.
    sets += [f"first_seen = min(COALESCE({t}.first_seen, excluded.first_seen), excluded.first_seen)",
             f"last_seen = max(COALESCE({t}.last_seen, excluded.last_seen), excluded.last_seen)"]
    return (f"INSERT INTO {t} ({', '.join(GROUP_COLUMNS)}) VALUES ({', '.join(['?'] * len(GROUP_COLUMNS))}) "
            f"ON CONFLICT (fingerprint) DO UPDATE SET {', '.join(sets)}")


class Utf8Hex:
    """A str parameter that asyncmy writes as `_utf8mb4 X'<hex of its UTF-8>'` (registered below). A
    connection made without the registration would still write str(value): correct, only slower."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def _utf8_hex(value: Utf8Hex, mapping: object = None) -> str:
    return "_utf8mb4 X'" + value.text.encode("utf-8", "surrogatepass").hex() + "'"


# asyncmy copies this table into every connection it makes (its `conv` default), ours and failover's alike
converters.conversions[Utf8Hex] = _utf8_hex


def _add(table: Table, columns: tuple[str, ...], conflict: str, mysql: bool) -> str:
    """INSERT the rows, or add their `count` to the row there: the count sync's upserts (workers/sync.py). Fixed
    text for the same reason as the batch writer's: 18,000 groups in one SQLAlchemy multi-row VALUES spent
    2.9 s of CPU per sync, 54 % of it compiling (py-spy), every 30 s, on the cores ingest runs on."""
    marks = ", ".join(["%s" if mysql else "?"] * len(columns))
    head = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks}) "
    if mysql:
        return head + "ON DUPLICATE KEY UPDATE count = count + VALUES(count)"
    return head + f"ON CONFLICT ({conflict}) DO UPDATE SET count = {table.name}.count + excluded.count"


_COUNTS = ("fingerprint", "count")
_HOURS = ("project_id", "fingerprint", "hour", "count")

_SQL = {
    "mysql": {
        "counts": _add(_groups, _COUNTS, "fingerprint", True),
        "hours": _add(_hours, _HOURS, "project_id, fingerprint, hour", True),
        "groups": _mysql_groups(),
        "samples": f"INSERT IGNORE INTO {_samples.name} ({', '.join(SAMPLE_COLUMNS)}) "
                   f"VALUES ({', '.join(['%s'] * len(SAMPLE_COLUMNS))})",
    },
    "sqlite": {
        "counts": _add(_groups, _COUNTS, "fingerprint", False),
        "hours": _add(_hours, _HOURS, "project_id, fingerprint, hour", False),
        "groups": _sqlite_groups(),
        "samples": f"INSERT INTO {_samples.name} ({', '.join(SAMPLE_COLUMNS)}) "
                   f"VALUES ({', '.join(['?'] * len(SAMPLE_COLUMNS))}) ON CONFLICT DO NOTHING",
    },
}


def _is_mysql(conn: AsyncConnection) -> bool:
    return conn.dialect.name in ("mysql", "mariadb")


def statement(conn: AsyncConnection, name: str) -> str:
    return _SQL["mysql" if _is_mysql(conn) else conn.dialect.name][name]


async def upsert_groups(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Create groups or widen their first/last seen; fill placeholder columns; never touch `count`."""
    if not rows:
        return
    text = Utf8Hex if _is_mysql(conn) else str
    params = [(r["fingerprint"], r["project_id"], r["message"] and text(r["message"]), r["error_type"],
               r["service"], r["level"], r["first_seen"], r["last_seen"], 0)
              for r in sorted(rows, key=lambda r: r["fingerprint"])]
    await conn.exec_driver_sql(statement(conn, "groups"), params)


async def insert_samples(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Store samples; an event id already stored is left as it is (a redelivered batch)."""
    if not rows:
        return
    text = Utf8Hex if _is_mysql(conn) else str
    params = [(r["event_id"], r["fingerprint"], r["received_at"], text(r["payload"]))
              for r in sorted(rows, key=lambda r: r["event_id"])]
    await conn.exec_driver_sql(statement(conn, "samples"), params)


async def add_counts(conn: AsyncConnection, counts: Mapping[str, int]) -> None:
    """Add each delta to its group's count, creating a count-only placeholder for a group not stored yet."""
    params = [(fp, n) for fp, n in sorted(counts.items()) if n]  # key order: two syncs lock rows alike
    if params:
        await conn.exec_driver_sql(statement(conn, "counts"), params)


async def add_hours(conn: AsyncConnection, hours: Mapping[tuple[int, str, int], int]) -> None:
    """Add each (project, group, hour) delta to its hour bucket (the trend of a group)."""
    params = [(p, fp, h, n) for (p, fp, h), n in sorted(hours.items()) if n]
    if params:
        await conn.exec_driver_sql(statement(conn, "hours"), params)
