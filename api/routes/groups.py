"""Read API: GET /errors (filter, sort, cursor pagination) and GET /errors/{fingerprint}."""

from __future__ import annotations

import base64
import binascii
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query
from sqlalchemy import and_, func, or_, select
from starlette.responses import Response

from api.deps import CountsDep, Reader, RuntimeDep
from api.errors import ApiError, json_response
from core import metrics
from core.db.models import ErrorGroup, Sample
from core.events import Level

router = APIRouter(tags=["read"], dependencies=[Reader])  # admin or dashboard token
MAX_SEARCH = 200  # characters of a search text
SEARCH_SCAN = 5000  # groups one search request reads at most (LIKE '%text%' cannot use an index)


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def group_json(g: Any, count: int | None = None) -> dict[str, Any]:
    """`count`: the exact count (DB + what Redis has not synced yet, core/counts.py); DB count if absent."""
    return {
        "fingerprint": g.fingerprint, "project_id": g.project_id, "message": g.message,
        "error_type": g.error_type, "service": g.service, "level": g.level,
        "count": g.count if count is None else count,
        "first_seen": iso(g.first_seen), "last_seen": iso(g.last_seen),
        "state": g.state, "regressed": bool(g.regressed), "state_changed_at": iso(g.state_changed_at),
        "ignore_until": iso(g.ignore_until), "ignore_until_count": g.ignore_until_count,
    }


def check_fingerprint(fingerprint: str) -> None:
    if fingerprint in ("log", "batch"):  # the ingest routes, asked with the wrong method
        raise ApiError(405, "method_not_allowed", f"/errors/{fingerprint} takes POST",
                       headers={"Allow": "POST"})
    if len(fingerprint) != 64 or any(c not in "0123456789abcdef" for c in fingerprint):
        raise ApiError(422, "invalid_fingerprint", "a fingerprint is 64 lowercase hex digits")


def _encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: str) -> list[Any]:
    """A cursor carries the sort it was made for: reused with another sort it would silently skip rows."""
    try:
        values = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, orjson.JSONDecodeError, ValueError):
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned") from None
    if not (isinstance(values, list) and len(values) == 3 and values[0] in ("count", "last_seen")
            and isinstance(values[2], str) and isinstance(values[1], int | float)):
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned")
    if values[0] != sort:
        raise ApiError(400, "invalid_cursor", f"this cursor belongs to sort={values[0]}, not sort={sort}")
    return values[1:]


@router.get("/errors")
async def list_groups(
    runtime: RuntimeDep,
    counts: CountsDep,
    service: Annotated[str | None, Query(max_length=128)] = None,
    level: Level | None = None,
    project_id: int | None = None,
    state: Literal["unresolved", "resolved", "ignored", "regressed"] | None = None,
    q: Annotated[str | None, Query(min_length=1, max_length=MAX_SEARCH)] = None,
    sort: Literal["count", "last_seen"] = "count",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    """Filters combine; `q` finds groups whose message contains the text (case-insensitive for ASCII). A
    message is not indexable text, so a search looks at the next SEARCH_SCAN groups of the page's order
    only: if that window ends before the page is full, the answer says `search_limited` and its
    `next_cursor` continues after the window."""
    if q is not None and "\x00" in q:  # SQLite ends a LIKE pattern there: it would match everything
        raise ApiError(422, "invalid_request", "q must not contain NUL characters")
    # Keyset pagination on (sort key, fingerprint), descending: stable under concurrent inserts.
    key = ErrorGroup.count if sort == "count" else func.coalesce(ErrorGroup.last_seen, 0.0)
    stmt = select(ErrorGroup.__table__)
    if service is not None:
        stmt = stmt.where(ErrorGroup.service == service)
    if level is not None:
        stmt = stmt.where(ErrorGroup.level == level)
    if project_id is not None:
        stmt = stmt.where(ErrorGroup.project_id == project_id)
    if state == "regressed":
        stmt = stmt.where(ErrorGroup.state == "unresolved", ErrorGroup.regressed.is_(True))
    elif state is not None:
        stmt = stmt.where(ErrorGroup.state == state)
    if cursor:
        value, fp = _decode_cursor(cursor, sort)
        stmt = stmt.where(or_(key < value, and_(key == value, ErrorGroup.fingerprint < fp)))
    order = (key.desc(), ErrorGroup.fingerprint.desc())
    window = None
    if q is not None:
        window = (stmt.with_only_columns(ErrorGroup.fingerprint.label("wfp"), key.label("wkey"))
                  .order_by(*order).limit(SEARCH_SCAN).subquery())
        stmt = (select(ErrorGroup.__table__).join(window, window.c.wfp == ErrorGroup.fingerprint)
                .where(ErrorGroup.message.contains(q, autoescape=True)))
    stmt = stmt.order_by(*order).limit(limit + 1)
    limited, edge = False, None
    with metrics.timed(metrics.DB_SECONDS, "list_groups"):
        async with runtime.engine.connect() as conn:
            rows = list(await conn.execute(stmt))
            if window is not None and len(rows) <= limit:
                edge = (await conn.execute(select(window.c.wkey, window.c.wfp).order_by(
                    window.c.wkey.asc(), window.c.wfp.asc()).limit(1))).first()
                scanned = (await conn.execute(select(func.count()).select_from(window))).scalar() or 0
                limited = scanned >= SEARCH_SCAN and edge is not None
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = None
    if more and rows:
        last = rows[-1]
        next_cursor = _encode_cursor([sort, last.count if sort == "count" else (last.last_seen or 0.0),
                                      last.fingerprint])
    elif limited and edge is not None:  # nothing more matched in the window: go on after it
        next_cursor = _encode_cursor([sort, edge.wkey, edge.wfp])
    # Pages are ordered by the DB's count (an index can serve that); the counts shown are exact.
    exact = await counts.exact([g.fingerprint for g in rows])
    items = [group_json(g, exact.get(g.fingerprint)) for g in rows]
    body: dict[str, Any] = {"items": items, "next_cursor": next_cursor}
    if q is not None:
        body["search_limited"] = limited
    return json_response(200, body)


@router.get("/errors/{fingerprint}")
async def get_group(fingerprint: str, runtime: RuntimeDep, counts: CountsDep) -> Response:
    """The group, its last samples and its hourly counts over `hourly_retention_days` (the group page)."""
    check_fingerprint(fingerprint)
    with metrics.timed(metrics.DB_SECONDS, "get_group"):
        async with runtime.engine.connect() as conn:
            row = (await conn.execute(select(ErrorGroup.__table__).where(
                ErrorGroup.fingerprint == fingerprint))).first()
            samples = (await conn.execute(
                select(Sample.payload).where(Sample.fingerprint == fingerprint)
                .order_by(Sample.id.desc()).limit(runtime.settings.samples_per_group))).scalars().all()
    if row is None:
        raise ApiError(404, "not_found", "no error group with this fingerprint")
    body = group_json(row, (await counts.exact([fingerprint])).get(fingerprint))
    body["samples"] = [_sample_json(orjson.loads(p)) for p in samples]
    days = runtime.settings.hourly_retention_days
    first_hour = int(time.time() // 3600) - days * 24 + 1
    hours = await counts.hours(row.project_id or 0, fingerprint, first_hour) if row.project_id is not None else {}
    # [[hour start, unix s], count] for hours with events, oldest first; the page fills the gaps with 0
    body["hourly"] = {"first_hour": first_hour * 3600, "days": days,
                      "counts": [[h * 3600, n] for h, n in sorted(hours.items())]}
    return json_response(200, body)


def _sample_json(event: dict[str, Any]) -> dict[str, Any]:
    """Samples are stored as the event the worker saw; times leave as ISO 8601 like the group's."""
    if isinstance(event.get("received_at"), int | float):
        event["received_at"] = iso(event["received_at"])
    return event
