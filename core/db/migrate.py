"""Bring the schema to the newest revision (alembic), then make sure the bootstrap project exists."""

from __future__ import annotations

import logging
from importlib import resources

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

from core.db.engine import make_engine
from core.settings import Settings


class _IgnoredPkName(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "alembic_version_pkc" not in record.getMessage()


def _alembic_config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("core.db").joinpath("migrations")))
    cfg.attributes["connection"] = connection
    return cfg


async def migrate(settings: Settings) -> None:
    # MariaDB answers note 1280 "Name 'alembic_version_pkc' ignored for PRIMARY key" to alembic's own version
    # table (a primary key has no name there); asyncmy logs every note at WARNING: printed at every start
    logging.getLogger("asyncmy").addFilter(_IgnoredPkName())
    engine = make_engine(settings)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync_conn: command.upgrade(_alembic_config(sync_conn), "head"))
    finally:
        await engine.dispose()
