"""PATCH /errors/{fingerprint}: a person changes a group's state (admin token only).

{"state": "resolved"} | {"state": "unresolved"} | {"state": "ignored"[, "ignore_for_seconds": s]
[, "ignore_until_count": n]}: ignored for good, or until s seconds have passed, or until n more events have
come (whichever first). The workers reopen a resolved group, or an ignored one whose condition ran out, when
an event comes (workers/triage.py). Dashboards get an error:state message at once.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import Response

from api.deps import Admin, CountsDep, RuntimeDep
from api.errors import ApiError, json_response
from api.routes.groups import check_fingerprint, group_json
from core.db import triage as db
from core.runtime import Runtime
from core.triage import Announcer

log = logging.getLogger("faultline.triage")
router = APIRouter(tags=["triage"], dependencies=[Admin])
MAX_IGNORE_SECONDS = 366 * 86_400
MAX_IGNORE_COUNT = 1_000_000_000


class StateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: Literal["unresolved", "resolved", "ignored"]
    # strict: "60", 60.5 or true are refused (422 naming the field), not read as a number
    ignore_for_seconds: Annotated[int, Field(ge=1, le=MAX_IGNORE_SECONDS, strict=True)] | None = None
    ignore_until_count: Annotated[int, Field(ge=1, le=MAX_IGNORE_COUNT, strict=True)] | None = None

    @model_validator(mode="after")
    def _ignore_only(self) -> StateIn:
        if self.state != "ignored" and (self.ignore_for_seconds is not None or self.ignore_until_count is not None):
            raise ValueError("ignore_for_seconds and ignore_until_count go with state 'ignored' only")
        return self


def announcer(request: Request, rt: Runtime) -> Announcer:
    state = request.app.state
    if getattr(state, "announcer", None) is None:  # one per app: it holds the Socket.IO publisher
        state.announcer = Announcer(rt.settings, rt.redis, rt.keys)
    return state.announcer  # type: ignore[no-any-return]


@router.patch("/errors/{fingerprint}")
async def set_state(fingerprint: str, body: StateIn, request: Request, runtime: RuntimeDep,
                    counts: CountsDep) -> Response:
    check_fingerprint(fingerprint)
    now = time.time()
    until_count = None
    if body.ignore_until_count is not None:  # "n more events": from the exact count now
        current = (await counts.exact([fingerprint])).get(fingerprint)
        if current is None:
            raise ApiError(404, "not_found", "no error group with this fingerprint")
        until_count = current + body.ignore_until_count
    until = now + body.ignore_for_seconds if body.ignore_for_seconds is not None else None
    async with runtime.engine.begin() as conn:
        row = await db.set_state(conn, fingerprint, body.state, now, until, until_count)
    if row is None:
        raise ApiError(404, "not_found", "no error group with this fingerprint")
    group: dict[str, Any] = group_json(row, (await counts.exact([fingerprint])).get(fingerprint))
    try:
        await announcer(request, runtime).announce([group], now)
    except Exception as exc:  # best effort: other dashboards read the state from GET /errors on reconnect
        log.warning("error:state not emitted: %s", exc)
    return json_response(200, group)
