"""The deliver_alert task: one signed webhook attempt per run; a failure raises, so core/retry.py parks the
task for a retry with growing delays and dead-letters it after FAULTLINE_RETRY_MAX_ATTEMPTS. Every attempt
is a row in alert_deliveries (GET /api/alerts/deliveries).

At least once, like every task: a worker that dies after the receiver answered but before the ack sends the
delivery again when the task is reclaimed, with the same X-Faultline-Delivery id (receivers may dedupe on
it). Once delivered, a Redis marker makes a redelivered task a no-op.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from core.alerts import payload
from core.alerts import rules as rule_store
from core.alerts.deliver import Sender, group_info, record
from core.keys import Keys
from core.settings import Settings

SENT_TTL = 86_400  # s a delivered id is remembered: longer than any retry schedule


class DeliveryFailed(Exception):
    """The receiver refused or did not answer: retried (not a transient error, so attempts are counted)."""


class Deliveries:
    def __init__(self, settings: Settings, engine: AsyncEngine, redis: Redis) -> None:
        self.settings, self.engine, self.redis = settings, engine, redis
        self.keys = Keys.from_settings(settings)
        self.sender = Sender(settings.alert_timeout, settings.alert_allow_private_urls)

    async def run(self, alert: dict[str, Any], attempt: int) -> str:
        sent_key = self.keys.alert_sent(alert["delivery_id"])
        if await self.redis.exists(sent_key):
            return "already delivered"
        async with self.engine.connect() as conn:
            rule = await rule_store.get(conn, int(alert["rule_id"]))
        if rule is None:
            return "rule removed"
        body = payload.body(alert, rule, await group_info(self.engine, alert.get("fingerprint"), self.redis, self.keys))
        result = await self.sender.post(rule.url, rule.secret, body, alert["delivery_id"])
        last = attempt >= self.settings.retry_max_attempts
        outcome = "delivered" if result.ok else "dead" if last else "retrying"
        await record(self.engine, alert, rule.id, attempt, result, outcome)
        if not result.ok:
            raise DeliveryFailed(result.error or "failed")
        await self.redis.set(sent_key, "1", ex=SENT_TTL)
        return "delivered"

    async def close(self) -> None:
        await self.sender.close()
