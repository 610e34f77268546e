"""A release never serves on an older schema. `faultline migrate --check` (the wait-for-schema initContainer of
every pod in deploy/k8s) fails with the reason until the migration ran; an API node or a worker started on an
older schema refuses with one clear log line; a newer schema (a rollback) is served.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable

import pytest
from sqlalchemy import text

from core.db.engine import make_engine
from core.db.migrate import SchemaTooOld, migrate, schema_state
from core.settings import Settings
from faultline.asgi import create
from faultline.services import free_port
from tests.integration.conftest import env_of
from workers.main import run_worker

OLD = "0002"


@pytest.fixture
async def old_schema(make_settings: Callable[..., Settings]) -> Settings:
    settings = make_settings()
    await migrate(settings, OLD)
    return settings


def faultline(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "faultline", *args], env=env_of(settings), capture_output=True,
                          text=True, timeout=120)


async def _head(settings: Settings) -> str:
    engine = make_engine(settings)
    try:
        return (await schema_state(engine)).head
    finally:
        await engine.dispose()


async def test_migrate_check_fails_on_an_old_schema_until_it_is_migrated(old_schema: Settings) -> None:
    head = await _head(old_schema)
    assert head != OLD
    out = faultline(old_schema, "migrate", "--check")  # what the initContainer runs (there with --wait)
    assert out.returncode == 1, out
    assert f"database schema is at {OLD}, this release needs {head}: run `faultline migrate`" in out.stderr
    await migrate(old_schema)
    engine = make_engine(old_schema)
    try:
        assert not (await schema_state(engine)).behind  # the same check now lets the pod start
    finally:
        await engine.dispose()


async def test_states_empty_older_current_and_newer(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    engine = make_engine(settings)
    try:
        empty = await schema_state(engine)
        assert empty.current is None and empty.behind and not empty.older and "empty database" in empty.describe()
        await migrate(settings)
        current = await schema_state(engine)
        assert current.current == current.head and not current.behind and not current.older
        async with engine.begin() as conn:  # a later release migrated it, then was rolled back
            await conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        newer = await schema_state(engine)
        assert not newer.known and not newer.behind and not newer.older
        assert "newer than this release" in newer.describe()
    finally:
        await engine.dispose()


async def test_api_and_worker_refuse_to_start_on_an_old_schema(old_schema: Settings,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    app = create(old_schema)
    with pytest.raises(SchemaTooOld):
        async with app.router.lifespan_context(app):
            pytest.fail("the API node served on an older schema")
    with pytest.raises(SystemExit) as stopped:
        await run_worker(old_schema, "worker-on-old-schema")
    assert stopped.value.code == 1
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refusing to start")]
    assert len(refusals) == 2 and all(f"database schema is at {OLD}" in line for line in refusals), refusals


def test_a_real_api_node_exits_non_zero_on_an_old_schema(old_schema: Settings) -> None:
    """What a pod does if it got past the initContainer anyway (schema rolled back meanwhile): no serving."""
    out = faultline(old_schema, "api", "--port", str(free_port()))
    assert out.returncode != 0
    assert f"refusing to start: database schema is at {OLD}" in out.stdout + out.stderr
