"""Admin API for alert rules and their deliveries (core/alerts/).

POST /api/alerts creates a rule and answers its signing secret, the only time it is shown; GET lists rules
(no secrets); DELETE removes one (deliveries already queued for it are dropped when they run);
POST /api/alerts/{id}/test sends one signed test delivery now and answers what the receiver said;
GET /api/alerts/deliveries lists every attempt, newest first (status code, error, attempt, latency, time).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from sqlalchemy import select
from starlette.responses import Response

from api.deps import Admin, RuntimeDep
from api.errors import ApiError, json_response
from core.alerts import rules
from core.alerts.deliver import Sender, attempts, send_test
from core.alerts.urls import UnsafeUrl, check_url
from core.db.models import Project

router = APIRouter(prefix="/api/alerts", tags=["alerts"], dependencies=[Admin])
RuleId = Annotated[int, Path(ge=1, le=2_147_483_647)]


@router.post("")
async def create_rule(body: rules.RuleIn, runtime: RuntimeDep) -> Response:
    try:
        await check_url(body.url, runtime.settings.alert_allow_private_urls)
    except UnsafeUrl as exc:
        raise ApiError(422, "unsafe_url", str(exc), details=[{"field": "url", "problem": str(exc)}]) from None
    async with runtime.engine.begin() as conn:
        if (await conn.execute(select(Project.id).where(Project.id == body.project_id))).first() is None:
            raise ApiError(404, "not_found", f"no project with id {body.project_id}")
        created = await rules.create(conn, body, runtime.settings.alert_cooldown)
    return json_response(201, {**{k: created[k] for k in rules.PUBLIC}, "secret": created["secret"],
                               "note": "the secret is shown once: verify X-Faultline-Signature with it"})


@router.get("")
async def list_rules(runtime: RuntimeDep,
                     project_id: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None) -> Response:
    async with runtime.engine.connect() as conn:
        rows = await rules.all_rules(conn, project_id)
    return json_response(200, {"items": [rules.public(r) for r in rows]})


@router.get("/deliveries")
async def list_deliveries(runtime: RuntimeDep,
                          rule_id: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None,
                          before: Annotated[int | None, Query(ge=1)] = None,
                          limit: Annotated[int, Query(ge=1, le=500)] = 100) -> Response:
    items = await attempts(runtime.engine, rule_id, before, limit)
    return json_response(200, {"items": items, "next_before": items[-1]["id"] if len(items) == limit else None})


@router.delete("/{rule_id}")
async def delete_rule(rule_id: RuleId, runtime: RuntimeDep) -> Response:
    async with runtime.engine.begin() as conn:
        if not await rules.remove(conn, rule_id):
            raise ApiError(404, "not_found", f"no alert rule with id {rule_id}")
    return json_response(200, {"deleted": rule_id})


@router.post("/{rule_id}/test")
async def test_rule(rule_id: RuleId, runtime: RuntimeDep) -> Response:
    async with runtime.engine.connect() as conn:
        rule = await rules.get(conn, rule_id)
    if rule is None:
        raise ApiError(404, "not_found", f"no alert rule with id {rule_id}")
    sender = Sender(runtime.settings.alert_timeout, runtime.settings.alert_allow_private_urls)
    try:
        alert, result = await send_test(runtime.engine, rule, sender)
    finally:
        await sender.close()
    return json_response(200, {"delivery_id": alert["delivery_id"], "ok": result.ok,
                               "status_code": result.status_code, "error": result.error,
                               "latency_ms": result.latency_ms})
