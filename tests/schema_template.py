"""The schema at head for a test's fresh database, without running every migration for each test.

A test run creates ~150 fresh databases (SQLite files, MariaDB databases on the session's server) and each
ran the five alembic migrations: ~0.1 s for a SQLite file, ~0.3 s on MariaDB. Here the first database of a
kind is migrated for real into a template, and every later one gets a copy of it: the SQLite file itself; on
MariaDB each table re-created from the template's SHOW CREATE TABLE, with its rows (alembic_version's).
The copy is the very schema `migrate` leaves, so what a test proves does not change; tests OF the
migrations (test_schema_check.py, test_project_keys.py) call core.db.migrate.migrate themselves.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from core.db.engine import make_engine
from core.db.migrate import migrate
from core.settings import Settings

TEMPLATE_DB = "schema_template"
# MariaDB servers a template may be made on: the session's (tests/conftest.py registers it); a test's own
# server (a fault test starts one, once) is migrated as before
MARIADB_PORTS: set[int] = set()
_made: dict[str, str] = {}  # "sqlite" -> template file; "mysql:<port>" -> template database name


async def migrated(settings: Settings) -> None:
    """Bring the test's database to head, as `migrate(settings)` does, by a copy when one can be made."""
    url = make_url(settings.resolved_database_url)
    target = _new_sqlite_file(url.get_backend_name(), url.database)
    if target is not None:
        await _sqlite(settings, target)
    elif url.get_backend_name() == "mysql" and url.port in MARIADB_PORTS and await _empty(settings):
        await _mariadb(settings, url.port)
    else:
        await migrate(settings)


def _new_sqlite_file(backend: str, database: str | None) -> Path | None:
    """The SQLite file of a database not created yet (an existing one is migrated as it is)."""
    path = Path(database) if backend == "sqlite" and database else None
    return path if path is not None and not path.exists() else None


async def _sqlite(settings: Settings, target: Path) -> None:
    if "sqlite" not in _made:
        folder = Path(tempfile.mkdtemp(prefix="faultline-schema-"))
        atexit.register(shutil.rmtree, folder, True)
        template = folder / "template.db"
        await migrate(settings.model_copy(update={"database_url": f"sqlite+aiosqlite:///{template}"}))
        _made["sqlite"] = str(template)  # closed by migrate (engine disposed): a whole, checkpointed file
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_made["sqlite"], target)


async def _empty(settings: Settings) -> bool:
    engine = make_engine(settings)
    try:
        async with engine.connect() as conn:
            return not (await conn.exec_driver_sql("SHOW TABLES")).all()
    finally:
        await engine.dispose()


async def _mariadb(settings: Settings, port: int) -> None:
    key = f"mysql:{port}"
    if key not in _made:
        engine = make_engine(settings)
        try:
            async with engine.begin() as conn:
                await conn.exec_driver_sql(f"CREATE DATABASE `{TEMPLATE_DB}` CHARACTER SET utf8mb4")
        finally:
            await engine.dispose()
        url = make_url(settings.resolved_database_url).set(database=TEMPLATE_DB)
        await migrate(settings.model_copy(update={"database_url": url.render_as_string(hide_password=False)}))
        _made[key] = TEMPLATE_DB
    engine = make_engine(settings)
    try:
        async with engine.begin() as conn:
            tables = [r[0] for r in (await conn.exec_driver_sql(
                f"SHOW FULL TABLES FROM `{TEMPLATE_DB}` WHERE Table_type = 'BASE TABLE'")).all()]
            for table in tables:
                row = (await conn.exec_driver_sql(f"SHOW CREATE TABLE `{TEMPLATE_DB}`.`{table}`")).one()
                ddl = str(list(row)[1])  # (name, CREATE TABLE statement)
                await conn.exec_driver_sql(ddl)  # unqualified: created in the test's own database
                await conn.exec_driver_sql(f"INSERT INTO `{table}` SELECT * FROM `{TEMPLATE_DB}`.`{table}`")
    finally:
        await engine.dispose()
