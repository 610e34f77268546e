"""GET /jobs/{id}: where an event (by event_id) or a task (by task id) is in the pipeline.

An event's state lives next to its dedup entry (core/dedup.py), keyed by (project, event id): pass
`project_id` to ask about one project; without it every project is asked (one script call) and the
first that remembers the id answers. Failed events (retrying, dead) also have a detail record.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query
from sqlalchemy import select
from starlette.responses import Response

from api.deps import RuntimeDep, authorize, require_project
from api.errors import ApiError, json_response
from core.db.models import Project
from core.dedup import RETRYING, JobStates, state_name

router = APIRouter(tags=["read"])


async def _project_ids(runtime: Any) -> list[int]:
    async with runtime.engine.connect() as conn:
        return [int(r[0]) for r in await conn.execute(select(Project.id).order_by(Project.id))]


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, runtime: RuntimeDep,
                  project_id: Annotated[int | None, Query(ge=0)] = None,
                  authorization: Annotated[str | None, Header()] = None,
                  x_faultline_key: Annotated[str | None, Header()] = None) -> Response:
    """The admin token sees every project (and task ids); the sending application may ask about its own
    events with its ingest key (X-Faultline-Key), and only about its own project's."""
    own: int | None = None
    if x_faultline_key and not authorization:
        own = await require_project(runtime, x_faultline_key)
        if project_id is not None and project_id != own:
            raise ApiError(403, "forbidden", "an ingest key reads its own project's events only")
    else:
        authorize(runtime.settings, authorization, admin_only=True)
    if not (0 < len(job_id) <= 64 and job_id.replace("-", "").isalnum()):
        raise ApiError(422, "invalid_job_id", "a job id is an event id or a task id")
    norm = job_id.replace("-", "").lower()
    if own is not None:
        projects = [own]
    else:
        projects = [project_id] if project_id is not None else await _project_ids(runtime)
    codes = await JobStates(runtime.redis, runtime.keys, runtime.settings).get([(p, norm) for p in projects])
    hit = next(((p, c) for p, c in zip(projects, codes, strict=True) if c is not None), None)
    if hit is not None:
        pid, code = hit
        state: dict[str, Any] = {"state": state_name(code), "attempts": 0, "last_error": None,
                                 "project_id": pid}
        detail = await runtime.redis.get(runtime.keys.event_detail(pid, norm)) if code > 0 else None
        if code >= RETRYING and detail:
            state.update(orjson.loads(detail))
        elif code > 0:  # running or succeeded: a retried one has a detail record with its attempt count
            state["attempts"] = int(orjson.loads(detail).get("attempts", 1)) if detail else 1
        return json_response(200, {"id": job_id, **state})
    raw = None if own is not None else await runtime.redis.get(runtime.keys.job(job_id))  # task ids: admin only
    if raw is None:
        raise ApiError(404, "not_found", "unknown job, or its record expired")
    return json_response(200, {"id": job_id, "attempts": 0, "last_error": None, **orjson.loads(raw)})
