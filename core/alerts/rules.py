"""Alert rules in the DB (the truth): validation shared by the admin API and the CLI, create/list/delete.

Kinds: new_group (first event of a group), regression (a resolved group got an event), spike (the feed's
spike detector, core/feed.py), threshold (at least `threshold` events in `window_minutes` minutes, counted
per minute). Formats: "json" (generic, documented in core/alerts/payload.py) or "slack" (an incoming-webhook
body). Each rule has its own signing secret (core/alerts/signing.py).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Table, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from core.alerts.signing import new_secret
from core.alerts.urls import MAX_URL
from core.db.models import AlertRule

KINDS = ("new_group", "regression", "spike", "threshold")
FORMATS = ("json", "slack")
MAX_WINDOW_MINUTES = 1440  # a day of per-minute counters at most (Redis memory: core/keys.py alert_minutes)
_rules: Table = AlertRule.__table__  # type: ignore[assignment]
PUBLIC = ("id", "project_id", "name", "kind", "threshold", "window_minutes", "url", "format", "cooldown",
          "created_at")


class RuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    project_id: int = Field(ge=1, le=2_147_483_647)
    kind: Literal["new_group", "regression", "spike", "threshold"]
    url: str = Field(min_length=8, max_length=MAX_URL)
    format: Literal["json", "slack"] = "json"
    name: str = Field(default="", max_length=128)
    threshold: int | None = Field(default=None, ge=1, le=1_000_000_000)
    window_minutes: int | None = Field(default=None, ge=1, le=MAX_WINDOW_MINUTES)
    # seconds; None = FAULTLINE_ALERT_COOLDOWN. 0 = every signal alerts (no storm protection).
    cooldown: float | None = Field(default=None, ge=0, le=30 * 86_400)

    @model_validator(mode="after")
    def _threshold_fields(self) -> RuleIn:
        if self.kind == "threshold":
            if self.threshold is None or self.window_minutes is None:
                raise ValueError("a threshold rule needs threshold (N events) and window_minutes (M)")
        elif self.threshold is not None or self.window_minutes is not None:
            raise ValueError("threshold and window_minutes belong to threshold rules only")
        return self


def public(row: Any) -> dict[str, Any]:
    """A rule as shown after creation: everything but the secret."""
    return {k: getattr(row, k) for k in PUBLIC}


async def create(conn: AsyncConnection, rule: RuleIn, default_cooldown: float) -> dict[str, Any]:
    """Insert the rule; returns it WITH its secret (the only time it is shown)."""
    values = {**rule.model_dump(), "name": rule.name or f"{rule.kind} → {rule.url[:80]}",
              "cooldown": default_cooldown if rule.cooldown is None else rule.cooldown,
              "secret": new_secret(), "created_at": time.time()}
    result = await conn.execute(_rules.insert().values(**values))
    return {"id": int(result.inserted_primary_key[0]), **values}  # type: ignore[index]


async def all_rules(conn: AsyncConnection, project_id: int | None = None) -> list[Any]:
    stmt = select(_rules).order_by(_rules.c.id)
    if project_id is not None:
        stmt = stmt.where(_rules.c.project_id == project_id)
    return list((await conn.execute(stmt)).all())


async def get(conn: AsyncConnection, rule_id: int) -> Any | None:
    return (await conn.execute(select(_rules).where(_rules.c.id == rule_id))).first()


async def remove(conn: AsyncConnection, rule_id: int) -> bool:
    result = await conn.execute(delete(_rules).where(_rules.c.id == rule_id))
    return bool(getattr(result, "rowcount", 0))
