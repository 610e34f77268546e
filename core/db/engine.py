"""Engine factory for MariaDB/MySQL (asyncmy) and the embedded SQLite default (aiosqlite)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from core.db.failover import failover_creator
from core.settings import Settings


class SqliteEngine(AsyncEngine):
    """`begin()` opens its transaction with BEGIN IMMEDIATE, `connect()` with a plain (deferred) BEGIN.

    Why: a deferred transaction that reads, then writes, cannot take the write lock once another process
    has committed since its read began (SQLITE_BUSY_SNAPSHOT): SQLite answers "database is locked" at once,
    without waiting out busy_timeout, because waiting could not help. The CI run met it creating a project
    while the workers wrote counts. Every read-then-write transaction here goes through `begin()`, so taking
    the write lock first (waiting up to busy_timeout for it) makes them wait instead of fail; reads through
    `connect()` keep WAL's readers-never-block.
    """

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        async with self.connect() as conn:
            await conn.execution_options(sqlite_immediate=True)
            async with conn.begin():
                yield conn


def make_engine(settings: Settings, **overrides: Any) -> AsyncEngine:
    single, creator = failover_creator(settings.resolved_database_url)
    url = make_url(single)
    if url.get_backend_name() == "sqlite":
        if url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        plain = create_async_engine(url, connect_args={"timeout": 30}, **overrides)
        engine: AsyncEngine = SqliteEngine(plain.sync_engine)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL: readers never block the one writer; several processes share the file.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
            # The sqlite3 module opens transactions only before INSERT/UPDATE/DELETE, never before a
            # SAVEPOINT: `begin_nested()` then runs outside any transaction and its RELEASE commits on its
            # own, so the count ledger row committed apart from the counts it guards (a crash between the two
            # lost the batch). Turn the module's handling off and emit BEGIN ourselves (SQLAlchemy's recipe).
            dbapi_conn.isolation_level = None

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Any) -> None:
            immediate = conn.get_execution_options().get("sqlite_immediate", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    # pre_ping + recycle below MariaDB's wait_timeout (8 h): no "server has gone away" after idling.
    options: dict[str, Any] = {
        "pool_pre_ping": True,
        "pool_recycle": 1800,
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_pool_size,
        "pool_timeout": 10,
    }
    if creator is not None:  # several hosts (a Galera cluster): core/db/failover.py
        options["async_creator"] = creator
    options.update(overrides)
    engine = create_async_engine(url, **options)

    @event.listens_for(engine.sync_engine, "handle_error")
    def _not_primary(ctx: Any) -> None:
        # 1047: a Galera node cut off from the primary component refuses every query while `SELECT 1` (the
        # pre-ping) still passes: call it a disconnect, so the pool drops its connections to that node
        args = getattr(ctx.original_exception, "args", ())
        if args and args[0] == 1047:
            ctx.is_disconnect = True

    return engine

