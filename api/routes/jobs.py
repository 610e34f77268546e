"""GET /jobs/{id}: where an event (by event_id) or a task (by task id) is in the pipeline."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from api.deps import Admin, RuntimeDep
from api.errors import ApiError, json_response

router = APIRouter(tags=["read"], dependencies=[Admin])


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, runtime: RuntimeDep) -> Response:
    if not (0 < len(job_id) <= 64 and job_id.replace("-", "").isalnum()):
        raise ApiError(422, "invalid_job_id", "a job id is an event id or a task id")
    norm = job_id.replace("-", "").lower()
    pipe = runtime.redis.pipeline(transaction=False)
    pipe.get(runtime.keys.event(norm))
    pipe.get(runtime.keys.job(job_id))
    event_state, task_state = await pipe.execute()
    raw = event_state or task_state
    if raw is None:
        raise ApiError(404, "not_found", "unknown job, or its record expired")
    if raw == b"queued":
        state = {"state": "queued", "attempts": 0, "last_error": None}
    else:
        state = {"attempts": 0, "last_error": None, **orjson.loads(raw)}
    return json_response(200, {"id": job_id, **state})
