"""Persist tasks go from the stream readers to the batch writer whole reads at a time, around taskiq.

Why: under the single-event ingest every event is its own message, and taskiq's receiver handles each one
alone: a TaskiqMessage model, an asyncio task, dependency injection, four middleware hooks, a result and an
ack each. py-spy put that at ~20 % of a busy worker, as much as the writer's SQL. Here a read's persist
messages (up to 200) are decoded in one loop (workers/taskevents.py), handed to the writer at once with one
future for all (workers/handoff.py), and acked with one XACK + XDEL.

The guarantees are taskiq's (ack type `when_saved`), kept message by message:
- a message is acked only after its events are committed, or after its failure was handed to
  RetryMiddleware.on_error (core/retry.py: backoff, then the dead letters), as taskiq's on_error does;
- a failure that cannot be parked (Redis down) leaves the message unacked: reclaimed after redeliver_after;
- at most `worker_concurrency` messages in flight (the readers wait for room before reading more);
- a stopping worker finishes what it took within shutdown_timeout; the rest stays pending for the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from taskiq import TaskiqMessage, TaskiqResult

from core import metrics
from core.broker import Delivery, FaultlineBroker
from core.heartbeat import Progress
from core.retry import RetryMiddleware
from core.tasks import ATTEMPT_LABEL, PERSIST_EVENTS
from core.taskstop import cancel_and_wait
from workers.batchrows import AnyEvent
from workers.taskevents import decode
from workers.writer import BatchWriter

log = logging.getLogger("faultline.persist")


class PersistRoute:
    task_names = frozenset({PERSIST_EVENTS})

    def __init__(self, broker: FaultlineBroker, writer: BatchWriter, retry: RetryMiddleware,
                 progress: Progress, limit: int) -> None:
        self.broker, self.writer, self.retry, self.progress = broker, writer, retry, progress
        self.limit = max(1, limit)
        self.in_flight = 0
        self._room = asyncio.Event()
        self._room.set()
        self._running: set[asyncio.Task[None]] = set()

    async def room(self) -> None:
        while self.in_flight >= self.limit:
            self._room.clear()
            await self._room.wait()

    def take(self, batch: list[Delivery]) -> None:
        self.in_flight += len(batch)
        self.progress.in_progress += len(batch)
        task = asyncio.create_task(self._run(batch), name=f"persist {len(batch)} messages")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def drain(self) -> None:
        """Until every batch taken is done (the worker bounds this wait by shutdown_timeout)."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def stop(self) -> None:
        """Past shutdown_timeout: drop what is left unacked (another worker reclaims it)."""
        await cancel_and_wait(list(self._running))

    async def _run(self, batch: list[Delivery]) -> None:
        try:
            outcomes: list[BaseException | None] = [None] * len(batch)
            tasks, slots = [], []
            for n, (_, _, _, msg) in enumerate(batch):
                try:
                    tasks.append(_decode(msg))
                    slots.append(n)
                except Exception as exc:  # a poison task: retried, then dead-lettered with the reason
                    outcomes[n] = exc
            if tasks:  # one hand-over, one future for the whole read (workers/handoff.py)
                for n, outcome in zip(slots, await self.writer.enqueue(tasks), strict=True):
                    outcomes[n] = outcome
            failed = [(d, exc) for d, exc in zip(batch, outcomes, strict=True) if exc is not None]
            parked = await asyncio.gather(*(self._park(d, exc) for d, exc in failed))
            # (stream, id): two shard streams can hand out the same id in the same millisecond
            unparked = {(d[0], d[1]) for (d, _), ok in zip(failed, parked, strict=True) if not ok}
            acks = [(stream, mid) for (stream, mid, _, _), exc in zip(batch, outcomes, strict=True)
                    if exc is None or (stream, mid) not in unparked]
            metrics.JOBS.labels("succeeded").inc(len(batch) - len(failed))
            self.progress.mark_done()
            self.progress.errors += len(failed)
            with contextlib.suppress(Exception):  # logged by the ack batcher; unacked = redelivered later
                await self.broker.ack_many(acks)
        finally:
            self.in_flight -= len(batch)
            self.progress.in_progress = max(0, self.progress.in_progress - len(batch))
            self._room.set()

    async def _park(self, delivery: Delivery, exc: BaseException) -> bool:
        """The failure to core/retry.py (a later attempt, or the dead letters); False if that failed too."""
        _, _, data, _ = delivery
        try:
            message = TaskiqMessage.model_validate_json(data)
            message.parse_labels()
        except Exception as err:  # not a task at all: logged and acked, as taskiq's receiver does
            log.warning("cannot parse message %r: %s; skipped", data[:200], err)
            return True
        try:
            result: TaskiqResult[Any] = TaskiqResult(is_err=True, return_value=None, execution_time=0.0,
                                                     labels=message.labels, error=exc)
            await self.retry.on_error(message, result, exc)
        except Exception as err:
            log.warning("a failed persist task could not be parked for a retry (%s); it will be redelivered",
                        err)
            return False
        return True


def _decode(msg: dict[str, Any]) -> tuple[list[AnyEvent], int]:
    """A message's events (workers/taskevents.py: plain ones without a model) and its attempt number; raises
    what a task that does not validate would (pydantic's ValidationError names the field)."""
    events = [decode(e) for e in msg["kwargs"]["events"]]
    return events, int(msg.get("labels", {}).get(ATTEMPT_LABEL, 1))
