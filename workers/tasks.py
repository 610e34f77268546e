"""Task bodies. The API enqueues by name (core.tasks); this module is the only place they run."""

from __future__ import annotations

from typing import Any

from taskiq import AsyncBroker, Context, TaskiqDepends

from core.events import Event
from core.tasks import ATTEMPT_LABEL, DELIVER_ALERT, PERSIST_EVENTS
from workers.deliveries import Deliveries
from workers.writer import BatchWriter


def register(broker: AsyncBroker, writer: BatchWriter, deliveries: Deliveries | None = None) -> None:
    @broker.task(task_name=PERSIST_EVENTS)
    async def persist_events(events: list[dict[str, Any]], context: Context = TaskiqDepends()) -> int:
        # Validation errors make this a poison task: retried, then dead-lettered with the reason.
        parsed = [Event.model_validate(e) for e in events]
        # The attempt number core/retry.py counts, so the job record says how many runs a success took.
        await writer.submit(parsed, attempt=int(context.message.labels.get(ATTEMPT_LABEL, 1)))
        return len(parsed)

    if deliveries is not None:
        @broker.task(task_name=DELIVER_ALERT)
        async def deliver_alert(alert: dict[str, Any], context: Context = TaskiqDepends()) -> str:
            return await deliveries.run(alert, int(context.message.labels.get(ATTEMPT_LABEL, 1)))
