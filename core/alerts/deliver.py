"""One webhook attempt: refuse unsafe addresses, sign, POST with a timeout, and record what happened.

Used by the workers' delivery task (workers/alerts.py: retries and dead letters come from core/retry.py)
and by `POST /api/alerts/{id}/test` / `faultline alert test` (one attempt, answered at once).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncEngine

from core.alerts import payload
from core.alerts.signing import DELIVERY_HEADER, sign
from core.alerts.urls import SafeResolver, UnsafeUrl, check_url
from core.db.models import AlertDelivery, ErrorGroup
from core.keys import Keys

log = logging.getLogger("faultline.alerts")
_deliveries: Table = AlertDelivery.__table__  # type: ignore[assignment]
GROUP_FIELDS = ("message", "service", "level", "count", "first_seen", "last_seen")


@dataclass
class Attempt:
    status_code: int | None
    error: str | None
    latency_ms: float

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Sender:
    """One HTTP client per process; connections only to addresses `SafeResolver` allows."""

    def __init__(self, timeout: float, allow_private: bool) -> None:
        self.timeout = timeout
        self.allow_private = allow_private
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(resolver=SafeResolver(self.allow_private), limit=100,
                                             force_close=True)
            self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(
                total=self.timeout), headers={"User-Agent": "Faultline-Webhook/1"})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, url: str, secret: str, body: bytes, delivery_id: str) -> Attempt:
        start = time.perf_counter()
        try:
            await check_url(url, self.allow_private)
            headers = {"Content-Type": "application/json", DELIVERY_HEADER: delivery_id, **sign(secret, body)}
            # no redirects: a 3xx to an internal address would walk around the address check
            async with self.session().post(url, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.content.read(65_536)  # the answer's body is not used; read a bounded part
                status: int | None = resp.status
                error = None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        except UnsafeUrl as exc:
            status, error = None, f"refused: {exc}"
        except TimeoutError:
            status, error = None, f"no answer within {self.timeout:g} s"
        except aiohttp.ClientError as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"
        return Attempt(status, error and error[:500], round((time.perf_counter() - start) * 1000, 2))


async def record(engine: AsyncEngine, alert: dict[str, Any], rule_id: int, attempt_no: int, attempt: Attempt,
                 outcome: str) -> None:
    """Best effort: a DB outage must not make a delivered alert look failed (and be sent again)."""
    try:
        async with engine.begin() as conn:
            await conn.execute(_deliveries.insert().values(
                delivery_id=alert["delivery_id"], rule_id=rule_id, project_id=alert["project_id"],
                kind=alert["kind"], fingerprint=alert.get("fingerprint"), attempt=attempt_no,
                status_code=attempt.status_code, error=attempt.error, latency_ms=attempt.latency_ms,
                outcome=outcome, created_at=time.time()))
    except Exception as exc:
        log.warning("delivery %s attempt %d not recorded: %s", alert["delivery_id"], attempt_no, exc)


async def group_info(engine: AsyncEngine, fingerprint: str | None, redis: Redis | None = None,
                     keys: Keys | None = None) -> dict[str, Any] | None:
    """The group as the DB has it; for a group so new that no worker has stored it yet (a new-group alert often
    goes out first), the summary ingest keeps for the live feed (message, service, level, first seen)."""
    if not fingerprint:
        return None
    async with engine.connect() as conn:
        row = (await conn.execute(select(*[getattr(ErrorGroup, f) for f in GROUP_FIELDS])
                                  .where(ErrorGroup.fingerprint == fingerprint))).first()
    if row is not None:
        return dict(zip(GROUP_FIELDS, row, strict=True))
    if redis is None or keys is None:
        return None
    try:
        live = orjson.loads(await redis.hget(keys.for_fingerprint(fingerprint).feed_groups, fingerprint) or b"null")
    except (orjson.JSONDecodeError, RedisError):
        return None
    return {f: live.get(f) for f in GROUP_FIELDS if f in live} if isinstance(live, dict) else None


async def send_test(engine: AsyncEngine, rule: Any, sender: Sender) -> tuple[dict[str, Any], Attempt]:
    """One signed "test" delivery of `rule`, recorded like any attempt (not retried): the answer says at
    once whether the receiver takes it and checks the signature."""
    alert = {"delivery_id": uuid.uuid4().hex, "kind": "test", "project_id": rule.project_id,
             "fingerprint": None, "at": time.time(), "count": None, "rule_id": rule.id}
    result = await sender.post(rule.url, rule.secret, payload.body(alert, rule, None), alert["delivery_id"])
    await record(engine, alert, rule.id, 1, result, "delivered" if result.ok else "failed")
    return alert, result


def attempt_json(row: Any) -> dict[str, Any]:
    return {k: getattr(row, k) for k in ("id", "delivery_id", "rule_id", "project_id", "kind", "fingerprint",
                                          "attempt", "status_code", "error", "latency_ms", "outcome",
                                          "created_at")}


async def attempts(engine: AsyncEngine, rule_id: int | None = None, before: int | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
    """Delivery attempts, newest first; `before`: an id from the previous page."""
    stmt = select(_deliveries).order_by(_deliveries.c.id.desc()).limit(limit)
    if rule_id is not None:
        stmt = stmt.where(_deliveries.c.rule_id == rule_id)
    if before is not None:
        stmt = stmt.where(_deliveries.c.id < before)
    async with engine.connect() as conn:
        return [attempt_json(r) for r in await conn.execute(stmt)]
