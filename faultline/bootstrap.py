"""Start-up and CLI writes of projects and keys: the DB first (the truth), then its copy in Redis.

FAULTLINE_INGEST_KEY is always made a key of the `default` project (added next to the keys it has), so
the key a user sets is the key that works; a key that belongs to another project stops the start with
a message saying so, rather than printing a key that would answer 401.
"""

from __future__ import annotations

from core import access
from core.db import repo
from core.db.engine import make_engine
from core.db.migrate import migrate
from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings

DEFAULT_PROJECT = "default"


class StartRefused(SystemExit):
    """Start-up cannot go on with these settings; the message says why and what to do."""


async def publish(settings: Settings) -> None:
    """Copy every live key hash from the DB to the Redis hash the API nodes read (revoked ones leave)."""
    engine = make_engine(settings)
    try:
        async with engine.connect() as conn:
            by_hash = await repo.projects_by_key(conn)
    finally:
        await engine.dispose()
    redis = make_redis(settings, timeout=5)
    try:
        await access.publish_keys(redis, Keys.from_settings(settings).projects, by_hash)
    finally:
        await redis.aclose()


async def ensure_default_project(settings: Settings, ingest_key: str) -> int:
    await migrate(settings)
    engine = make_engine(settings)
    try:
        async with engine.begin() as conn:
            pid, _ = await repo.ensure_project(conn, DEFAULT_PROJECT, ingest_key)
    except repo.KeyConflict as exc:
        raise StartRefused(f"FAULTLINE_INGEST_KEY cannot be the key of the {DEFAULT_PROJECT!r} project: {exc}. "
                           "Set another FAULTLINE_INGEST_KEY (or unset it to use the saved one).") from None
    finally:
        await engine.dispose()
    await publish(settings)
    return pid
