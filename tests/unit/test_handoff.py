"""When the batch writer's queue (workers/handoff.py `Pending`) hands out a batch: after its delay, at `size`
events, or at `tasks` waiting tasks, whichever comes first."""

from __future__ import annotations

import asyncio
import time

from workers.handoff import Pending


async def timed_batch(pending: Pending) -> tuple[int, int, float]:
    """(tasks, events) of the next batch and how long it took to come."""
    started = time.monotonic()
    items = await pending.batch()
    return len(items), sum(len(events) for events, _, _ in items), time.monotonic() - started


async def test_a_few_small_tasks_wait_for_the_delay() -> None:
    pending = Pending(size=100, delay=0.3, tasks=10)
    pending.add([["e"]] * 3)
    tasks, events, waited = await timed_batch(pending)
    assert (tasks, events) == (3, 3)
    assert waited >= 0.25


async def test_enough_events_start_a_batch_at_once_and_the_rest_waits() -> None:
    pending = Pending(size=10, delay=5.0, tasks=100)
    pending.add([["e"] * 4] * 4)  # 16 events: the batch takes whole tasks up to 10 events (3 tasks, 12)
    tasks, events, _ = await asyncio.wait_for(timed_batch(pending), 3.0)  # not the 5 s delay
    assert (tasks, events) == (3, 12)
    assert pending.events == 4 and len(pending.items) == 1


async def test_enough_waiting_tasks_start_a_batch_before_the_delay() -> None:
    # many one-event messages: the readers stop at their in-flight limit long before `size` events wait
    pending = Pending(size=2000, delay=5.0, tasks=50)
    pending.add([["e"]] * 30)
    waiter = asyncio.create_task(timed_batch(pending))
    await asyncio.sleep(0.05)
    assert not waiter.done()  # 30 tasks, 30 events: below both bounds, it waits
    pending.add([["e"]] * 30)  # 60 tasks waiting: the batch goes now, with 50 of them
    tasks, events, _ = await asyncio.wait_for(waiter, 3.0)  # not the 5 s delay
    assert (tasks, events) == (50, 50)
    assert len(pending.items) == 10
    # the 10 left are below both bounds again: the next batch waits for its delay
    nxt = asyncio.create_task(timed_batch(pending))
    await asyncio.sleep(0.05)
    assert not nxt.done()
    nxt.cancel()
