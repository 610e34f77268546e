"""Ingest keys: several per project, hashed at rest (DB and Redis), migrated from 0001's plain column,
and FAULTLINE_INGEST_KEY always made a working key of `default` (or refused, saying why)."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest
from alembic import command
from sqlalchemy import inspect, text

from core.db import repo
from core.db.engine import make_engine
from core.db.migrate import _alembic_config, migrate
from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings
from faultline.bootstrap import StartRefused, ensure_default_project, publish
from tests.integration.conftest import api_client


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def dump_db(settings: Settings) -> str:
    """Every value of every table, as text: what someone holding a copy of the DB could read."""
    engine = make_engine(settings)
    out: list[str] = []
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
        for table in tables:
            rows = await conn.execute(text(f"SELECT * FROM {table}"))
            out.extend(repr(tuple(r)) for r in rows)
    await engine.dispose()
    return "\n".join(out)


async def test_0002_moves_plain_keys_to_hashes(make_settings: Any, db_url: str) -> None:
    settings = make_settings(database_url=db_url)
    old_key = f"old-plain-key-{time.time_ns()}"
    engine = make_engine(settings)
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(_alembic_config(c), "0001"))
        await conn.execute(text("INSERT INTO projects (name, ingest_key, created_at) VALUES ('legacy', :k, 0)"),
                           {"k": old_key})
    await engine.dispose()
    await migrate(settings)
    engine = make_engine(settings)
    async with engine.connect() as conn:
        assert await repo.owner_of_key(conn, old_key) is not None  # the old key still works
        columns = await conn.run_sync(lambda c: [col["name"] for col in inspect(c).get_columns("projects")])
    await engine.dispose()
    assert "ingest_key" not in columns
    dump = await dump_db(settings)
    assert old_key not in dump and sha(old_key) in dump


async def test_ingest_key_is_always_a_key_of_default(make_settings: Any) -> None:
    settings = make_settings()
    key_a, key_b = f"key-a-{time.time_ns()}-xxxxxxxx", f"key-b-{time.time_ns()}-yyyyyyyy"
    pid = await ensure_default_project(settings, key_a)
    assert await ensure_default_project(settings, key_b) == pid  # B added next to A, not ignored
    engine = make_engine(settings)
    async with engine.begin() as conn:
        other, _ = await repo.ensure_project(conn, "other", "key-of-another-project-zzzz")
    await engine.dispose()
    with pytest.raises(StartRefused, match="'other'"):
        await ensure_default_project(settings, "key-of-another-project-zzzz")
    await publish(settings)

    redis = make_redis(settings, timeout=5)
    stored = {k.decode(): int(v) for k, v in (await redis.hgetall(Keys.from_settings(settings).projects)).items()}
    await redis.aclose()
    assert stored == {sha(key_a): pid, sha(key_b): pid, sha("key-of-another-project-zzzz"): other}
    dump = await dump_db(settings)
    for key in (key_a, key_b, "key-of-another-project-zzzz"):
        assert key not in dump

    async with api_client(settings) as c:
        for key in (key_a, key_b):
            r = await c.post("/errors/log", json={"message": "hello"}, headers={"X-Faultline-Key": key})
            assert r.status_code == 202, r.text
        r = await c.post("/errors/log", json={"message": "hello"}, headers={"X-Faultline-Key": sha(key_a)})
        assert r.status_code == 401  # the hash itself is not a key
        redis_fields = await c._transport.app.state.runtime.redis.hkeys(  # type: ignore[attr-defined]
            Keys.from_settings(settings).projects)
    assert key_a.encode() not in redis_fields and key_b.encode() not in redis_fields


async def test_revoked_key_leaves_redis_and_stops_working(make_settings: Any) -> None:
    settings = make_settings()
    old, new = "old-key-0123456789abcdef", "new-key-0123456789abcdef"
    pid = await ensure_default_project(settings, old)
    engine = make_engine(settings)
    async with engine.begin() as conn:
        await repo.add_key(conn, pid, new)
        assert await repo.revoke_keys_except(conn, pid, new) == 1
    await engine.dispose()
    await publish(settings)
    async with api_client(settings) as c:
        assert (await c.post("/errors/log", json={"message": "x"}, headers={"X-Faultline-Key": new})).status_code == 202
        assert (await c.post("/errors/log", json={"message": "x"}, headers={"X-Faultline-Key": old})).status_code == 401
