"""Admin API for projects and their limits: GET /api/projects, PUT /api/projects/{id}/quota.

GET lists every project with its effective quota (own value or default), what it dropped (events over its
quota) and what went to its overflow group, so users know what they lost. PUT replaces the project's
overrides in the DB (the truth) and then in the Redis copy the ingest script reads; a field left out or
null means "the default", 0 means "no limit".
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.responses import Response

from api.deps import RuntimeDep, admin
from api.errors import ApiError, json_response
from core.db.models import Project
from core.ratelimit import quota as q
from core.runtime import Runtime

router = APIRouter(tags=["projects"], dependencies=[Depends(admin)])
log = logging.getLogger("faultline.quota")
Limit = Annotated[int | None, Field(ge=0, le=1_000_000_000)]
MIRROR_EVERY = 60.0  # s: a Redis that lost its copy (flushed, restarted without AOF) has it back within this


class QuotaIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_second: Limit = None
    per_minute: Limit = None
    new_groups_per_hour: Limit = None


async def _project_rows(rt: Runtime, project_id: int | None = None) -> list[Any]:
    stmt = select(Project.id, Project.name, Project.created_at).order_by(Project.id)
    if project_id is not None:
        stmt = stmt.where(Project.id == project_id)
    async with rt.engine.connect() as conn:
        rows = list(await conn.execute(stmt))
        quotas = await q.load_quotas(conn)
    return [(r, quotas.get(int(r.id), q.Quota())) for r in rows]


async def _listing(rt: Runtime, project_id: int | None = None) -> list[dict[str, Any]]:
    rows = await _project_rows(rt, project_id)
    dropped = await q.dropped_counts(rt.redis, rt.keys, [int(r.id) for r, _ in rows])
    out = []
    for row, quota in rows:
        pid = int(row.id)
        counts = dropped.get(pid, {})
        out.append({
            "id": pid, "name": row.name, "created_at": row.created_at,
            "quota": {**quota.effective(rt.settings), "overrides": {f: getattr(quota, f) for f in q.FIELDS},
                      "enforced": rt.settings.rate_limit_enabled},
            "dropped": {"total": counts.get("rate_limited", 0), "rate_limited": counts.get("rate_limited", 0)},
            "overflow": {"events": counts.get("overflow", 0), "fingerprint": q.overflow_fingerprint(pid)},
        })
    return out


@router.get("/api/projects")
async def list_projects(runtime: RuntimeDep) -> Response:
    return json_response(200, {"items": await _listing(runtime)})


@router.put("/api/projects/{project_id}/quota")
async def set_quota(body: QuotaIn, runtime: RuntimeDep,
                    project_id: Annotated[int, Path(ge=1, le=2_147_483_647)]) -> Response:
    quota = q.Quota(body.per_second, body.per_minute, body.new_groups_per_hour)
    async with runtime.engine.begin() as conn:
        exists = (await conn.execute(select(Project.id).where(Project.id == project_id))).first()
        if exists is None:
            raise ApiError(404, "not_found", f"no project with id {project_id}")
        await q.save_quota(conn, project_id, quota)
    await q.mirror_one(runtime.redis, runtime.keys, project_id, quota)
    [entry] = await _listing(runtime, project_id)
    return json_response(200, entry)


async def mirror_now(rt: Runtime) -> None:
    """DB quotas -> Redis copy; at start-up (before serving: not cancelled half-way through a DB call)."""
    async with rt.engine.connect() as conn:
        quotas = await q.load_quotas(conn)
    await q.mirror(rt.redis, rt.keys, quotas)


async def keep_mirrored(rt: Runtime, every: float = MIRROR_EVERY) -> None:
    """Once a minute, one Redis call: did Redis lose its copy (flushed, restarted without AOF)? Only then
    read the DB again. Survives DB and Redis outages (one warning per outage, keeps trying)."""
    failing = False
    while True:
        await asyncio.sleep(every)
        try:
            if not await q.is_mirrored(rt.redis, rt.keys):
                await mirror_now(rt)
                log.info("quota mirror: Redis had lost the quotas; copied them again from the DB")
            failing = False
        except Exception as exc:
            if not failing:
                log.warning("quota mirror: %s (will retry)", exc)
            failing = True
