"""Bring the schema to the newest revision (alembic); tell whether a database is at the revision this
release needs (`faultline migrate --check`, the start-up check of API nodes and workers)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db.engine import make_engine
from core.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config

# alembic logs each of its plugins at INFO when it is imported, i.e. at every start of every process: quiet
# before the first import (alembic is imported inside the functions below, after this line has run)
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


class _IgnoredPkName(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "alembic_version_pkc" not in record.getMessage()


def _alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("core.db").joinpath("migrations")))
    cfg.attributes["connection"] = connection
    return cfg


# A database that does not answer the start-up check within this long is treated as unreachable: the process
# starts (and, being on a live database, its own queries will say more) rather than hang before serving.
START_CHECK_TIMEOUT = 5.0


class SchemaTooOld(RuntimeError):
    """The database is behind this release: serving would fail on missing tables/columns."""


@dataclass(frozen=True)
class SchemaState:
    current: str | None  # None: no alembic_version (an empty database)
    head: str  # what this release's migrations end at
    known: bool  # current is one of this release's revisions (False: a newer release migrated it)

    @property
    def older(self) -> bool:
        """Migrated by an older release: this release's code would fail on missing tables or columns."""
        return self.known and self.current != self.head

    @property
    def behind(self) -> bool:
        """Not at what this release needs: older, or never migrated at all."""
        return self.older or self.current is None

    def describe(self) -> str:
        if self.behind:
            return (f"database schema is at {self.current or 'nothing (empty database)'}, this release needs "
                    f"{self.head}: run `faultline migrate` (Kubernetes: the faultline-migrate Job of this release)")
        if self.current != self.head:  # rolled back past a migration: new columns are additive, serving works
            return f"database schema is at {self.current}, newer than this release's {self.head}"
        return f"database schema is at {self.head}, as this release needs"


async def schema_state(engine: AsyncEngine) -> SchemaState:
    """Raises what the driver raises when the database cannot be reached."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    head = script.get_current_head()
    assert head is not None, "no migrations packaged"
    async with engine.connect() as conn:
        current = await conn.run_sync(lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision())
    known = current is not None and any(rev.revision == current for rev in script.walk_revisions())
    return SchemaState(current, head, known)


async def require_current_schema(engine: AsyncEngine, log: logging.Logger) -> None:
    """Start-up check of a process that reads/writes the schema: raise SchemaTooOld (with the message for the
    log) on an older schema. Only logged: an unreachable database (the process starts and rides it out, ingest
    keeps going through Redis; it checks nothing it cannot see), and a database never migrated at all (a first
    start whose `faultline migrate` comes next: nothing in it can be served wrong, and ingest works meanwhile).
    `faultline migrate --check`, which pods wait on, refuses both."""
    try:
        state = await asyncio.wait_for(schema_state(engine), START_CHECK_TIMEOUT)
    except Exception as exc:
        log.warning("start-up: database unreachable, schema revision not checked: %s", exc or type(exc).__name__)
        return
    if state.older:
        log.error("refusing to start: %s", state.describe())
        raise SchemaTooOld(state.describe())
    if state.current is None:
        log.warning("start-up: %s", state.describe())


async def migrate(settings: Settings, revision: str = "head") -> None:
    # MariaDB answers note 1280 "Name 'alembic_version_pkc' ignored for PRIMARY key" to alembic's own version
    # table (a primary key has no name there); asyncmy logs every note at WARNING: printed at every start
    logging.getLogger("asyncmy").addFilter(_IgnoredPkName())
    from alembic import command

    engine = make_engine(settings)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync_conn: command.upgrade(_alembic_config(sync_conn), revision))
    finally:
        await engine.dispose()
