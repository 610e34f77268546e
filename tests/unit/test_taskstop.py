"""core/taskstop.py: background tasks that swallow a cancellation still end (the worker stop hang)."""

from __future__ import annotations

import asyncio

import pytest

from core.taskstop import cancel_and_wait


async def _swallows(times: int, turns: list[int], released: asyncio.Event | None = None) -> None:
    """A loop that catches CancelledError `times` times (or until `released`) and goes on, as the hung
    retry pump did."""
    swallowed = 0
    while True:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            swallowed += 1
            if swallowed > times or (released is not None and released.is_set()):
                raise
        turns.append(1)


async def _fails() -> None:
    raise ValueError("ended by itself")


def test_a_task_that_swallowed_a_cancel_is_cancelled_again_until_it_ends() -> None:
    async def main() -> tuple[list[asyncio.Task[None]], asyncio.Task[None], bool]:
        turns: list[int] = []
        task = asyncio.create_task(_swallows(2, turns))
        await asyncio.sleep(0.05)
        left = await cancel_and_wait([task], grace=5.0)
        # a plain cancel-and-gather would still be waiting here: the task swallowed the first cancel
        return left, task, bool(turns)

    left, task, looped = asyncio.run(main())
    assert left == [] and task.cancelled() and looped


def test_a_task_that_never_ends_is_returned_after_the_grace() -> None:
    async def main() -> tuple[list[asyncio.Task[None]], list[asyncio.Task[None]]]:
        released = asyncio.Event()
        stubborn = asyncio.create_task(_swallows(10**6, [], released), name="stubborn")
        failed = asyncio.create_task(_fails(), name="failed")
        await asyncio.sleep(0.05)
        left = await cancel_and_wait([stubborn, failed], grace=1.2)
        still = [t for t in left if not t.done()]
        released.set()  # end it, or asyncio.run would wait for it for ever as well
        await cancel_and_wait([stubborn])
        return left, still

    left, still = asyncio.run(main())
    assert [t.get_name() for t in left] == ["stubborn"] and still == left


@pytest.mark.parametrize("count", [0, 3])
def test_tasks_that_honour_the_cancel_end_at_once(count: int) -> None:
    async def main() -> list[asyncio.Task[None]]:
        tasks = [asyncio.create_task(asyncio.sleep(60)) for _ in range(count)]
        await asyncio.sleep(0)
        left = await cancel_and_wait(tasks, grace=0.2)
        assert all(t.cancelled() for t in tasks)
        return left

    assert asyncio.run(main()) == []
