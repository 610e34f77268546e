"""Dead letters over HTTP (admin token): list, show, replay one, purge. See core/dlq.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response

from api.deps import RuntimeDep, admin
from api.errors import ApiError, json_response
from core import dlq

router = APIRouter(prefix="/admin/dlq", tags=["admin"], dependencies=[Depends(admin)])


def _check(task_id: str) -> None:
    if not (0 < len(task_id) <= 64 and task_id.replace("-", "").isalnum()):
        raise ApiError(422, "invalid_task_id", "a dead letter is named by its task id (GET /admin/dlq)")


@router.get("")
async def list_dead(runtime: RuntimeDep, offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
                    limit: Annotated[int, Query(ge=1, le=500)] = 50) -> Response:
    items = await dlq.page(runtime.redis, runtime.keys, offset, limit)
    total = await dlq.count(runtime.redis, runtime.keys)
    return json_response(200, {"total": total, "offset": offset, "items": [dlq.summary(r) for r in items]})


@router.get("/{task_id}")
async def show_dead(task_id: str, runtime: RuntimeDep) -> Response:
    _check(task_id)
    record = await dlq.get(runtime.redis, runtime.keys, task_id)
    if record is None:
        raise ApiError(404, "not_found", "no dead letter with this task id")
    return json_response(200, {**dlq.summary(record), "message": record.get("message")})


@router.post("/{task_id}/replay")
async def replay_dead(task_id: str, runtime: RuntimeDep) -> Response:
    _check(task_id)
    if not await dlq.replay(runtime.redis, runtime.keys, runtime.settings, task_id):
        raise ApiError(404, "not_found", "no dead letter with this task id (already replayed or purged?)")
    return json_response(202, {"replayed": task_id, "status": "queued"})


@router.delete("")
async def purge_dead(runtime: RuntimeDep) -> Response:
    return json_response(200, {"purged": await dlq.purge(runtime.redis, runtime.keys)})
