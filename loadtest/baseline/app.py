"""The naive baseline: the seed's "version 1", kept naive on purpose.

In the request: SELECT the group by fingerprint, then UPDATE its count (read-modify-write: count = what we
read + 1) or INSERT it. Same MariaDB, same payloads, same nodes and nginx as ours. Its known flaws are the
point of the comparison: latency grows with DB round trips and pool waits, concurrent updates of one group
lose counts (two requests read 41, both write 42), and two first events of a new group race on INSERT
(one gets a duplicate-key 500). The load test reports all of that next to our figures.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request
from pydantic import ValidationError
from sqlalchemy import BigInteger, Column, Double, MetaData, String, Table, Text, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.responses import Response

from core.events import LogErrorIn

metadata = MetaData()
naive_errors = Table(
    "naive_errors", metadata,
    Column("fingerprint", String(64), primary_key=True),
    Column("message", Text), Column("service", String(128)), Column("level", String(16)),
    Column("first_seen", Double), Column("last_seen", Double), Column("count", BigInteger),
)
# TypeORM's default pool is 10 connections; the seed's naive app ran with it.
POOL_SIZE = int(os.environ.get("BASELINE_POOL_SIZE", "10"))


def fingerprint(item: LogErrorIn) -> str:
    basis = item.fingerprint or f"{item.service}:{item.message}"
    return hashlib.sha256(basis.encode()).hexdigest()


def _json(status: int, body: dict[str, object]) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def record(engine: AsyncEngine, item: LogErrorIn) -> str:
    fp = fingerprint(item)
    now = time.time()
    async with engine.begin() as conn:
        query = select(naive_errors.c.count).where(naive_errors.c.fingerprint == fp)
        row = (await conn.execute(query)).first()
        if row is not None:
            await conn.execute(naive_errors.update().where(naive_errors.c.fingerprint == fp)
                               .values(count=row[0] + 1, last_seen=now))
        else:
            await conn.execute(naive_errors.insert().values(
                fingerprint=fp, message=item.message, service=item.service, level=item.level,
                first_seen=now, last_seen=now, count=1))
    return fp


async def total_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        total = await conn.execute(select(func.coalesce(func.sum(naive_errors.c.count), 0)))
        return int(total.scalar_one())


def create(database_url: str | None = None) -> FastAPI:
    url = database_url or os.environ["BASELINE_DATABASE_URL"]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = app.state.engine = create_async_engine(url, pool_size=POOL_SIZE, max_overflow=0,
                                                        pool_timeout=30, pool_pre_ping=True)
        # create_all checks, then creates: three nodes starting at once race between the two steps and
        # all but one fail with 1050 "table already exists". Losing that race is fine.
        try:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
        except OperationalError as exc:
            if "1050" not in str(exc.orig):
                raise
        yield
        await engine.dispose()

    app = FastAPI(title="naive baseline", lifespan=lifespan)

    @app.post("/errors/log")
    async def log_error(request: Request) -> Response:
        try:
            item = LogErrorIn.model_validate_json(await request.body())
        except ValidationError as exc:
            detail = exc.errors(include_url=False, include_input=False)
            return _json(422, {"error": "invalid", "detail": detail})
        fp = await record(request.app.state.engine, item)
        return _json(201, {"status": "logged", "fingerprint": fp})

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app
