"""api/ingestwait.py: which answer of a call's runs settles it (the rules a 503 "not counted" rests on)."""

from __future__ import annotations

import asyncio
from typing import Any

from api.ingestwait import Run, final

LATE, SHED = -2, -1


def run(deadline: int | None, answer: list[Any] | BaseException | None = None) -> Run:
    fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
    if isinstance(answer, BaseException):
        fut.set_exception(answer)
    elif answer is not None:
        fut.set_result(answer)
    return Run(task=fut, deadline=deadline)


async def test_an_answer_that_counted_settles_whatever_else_is_out() -> None:
    counted = [0, 500, 7, -1, 0, 0]  # event 1 counted now, event 2 by an earlier run of the call
    assert final([run(900), run(1000, counted), run(1200)], 2) == counted
    assert final([run(900, [0, 950, 0, 0, 0, 0]), run(1000)], 2) is None  # all duplicates: run 2 may count


async def test_nothing_counted_settles_only_once_past_every_other_deadline() -> None:
    late = [LATE, 1300]
    assert final([run(900), run(1200), run(1, late)], 2) == late  # the probe, after both deadlines
    assert final([run(900), run(1300), run(1, late)], 2) is None  # run 2 may still count until 1300
    assert final([run(900, OSError("reset")), run(1, late)], 2) == late  # failed after sending: covered too
    assert final([run(None), run(1, late)], 2) is None  # not sent yet: it still may be
    assert final([run(None, OSError("pool")), run(1, late)], 2) == late  # failed before sending


async def test_of_several_nothing_counted_answers_the_most_telling() -> None:
    dup, shed, late = [0, 950, 0, 0, 0, 0], [SHED, 960, 50], [LATE, 1300]
    assert final([run(900, dup), run(1200, shed), run(1, late)], 2) == dup
    assert final([run(900, [LATE, 1000]), run(1200, shed), run(1, late)], 2) == shed
