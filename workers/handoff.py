"""Tasks waiting for the batch writer: handed over a whole stream read at a time, taken a batch at a time.

Why not an asyncio.Queue with a future per task: read with `wait_for(queue.get(), ...)` per task, that cost
a task, a timer and a future per message, ~10 % of a busy worker under single events (py-spy,
loadtest/worker_cpu.py). Here a read's tasks share ONE future, settled once every task's outcome is known,
and the writer waits once per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from workers.batchrows import AnyEvent

Outcomes = list[BaseException | None]  # per task handed over together: None once committed, else its error


class Handoff:
    """The tasks of one hand-over and their outcomes."""

    __slots__ = ("future", "left", "outcomes")

    def __init__(self, n: int) -> None:
        self.future: asyncio.Future[Outcomes] = asyncio.get_running_loop().create_future()
        self.outcomes: Outcomes = [None] * n
        self.left = n

    def settle(self, index: int, exc: BaseException | None) -> None:
        self.outcomes[index] = exc
        self.left -= 1
        if self.left == 0 and not self.future.done():
            self.future.set_result(self.outcomes)


Item = tuple[Sequence[AnyEvent], Handoff, int]  # a task's events, its hand-over, its index there


class Pending:
    """Collects for up to `delay` s from the first task waiting, or until `size` events or `tasks` tasks wait.

    `tasks`: the stream readers stop at worker_concurrency messages in flight (workers/persist.py); when half
    of them wait here, waiting out the delay would only keep the readers idle (small messages at a high rate
    would be throttled to worker_concurrency per delay)."""

    def __init__(self, size: int, delay: float, tasks: int | None = None) -> None:
        self.size, self.delay = size, delay
        self.max_tasks = tasks or 1 << 30
        self.items: list[Item] = []
        self.events = 0
        self._ready, self._full = asyncio.Event(), asyncio.Event()

    def add(self, tasks: Sequence[Sequence[AnyEvent]]) -> Handoff:
        handoff = Handoff(len(tasks))
        for i, events in enumerate(tasks):
            self.items.append((events, handoff, i))
            self.events += len(events)
        if tasks:
            self._ready.set()
            if self.events >= self.size or len(self.items) >= self.max_tasks:
                self._full.set()
        return handoff

    async def batch(self) -> list[Item]:
        """The next batch: tasks from the front up to `size` events (at least one task)."""
        await self._ready.wait()
        if not self._full.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.delay)
        n = events = 0
        for evs, _, _ in self.items:
            n += 1
            events += len(evs)
            if events >= self.size or n >= self.max_tasks:
                break
        taken, self.items = self.items[:n], self.items[n:]
        self.events -= events
        if not self.items:
            self._ready.clear()
        if self.events < self.size and len(self.items) < self.max_tasks:
            self._full.clear()
        return taken
