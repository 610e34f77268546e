"""Stop background tasks for sure: cancel, and cancel again while they run on.

`task.cancel(); await gather(task)` waits for ever if the task swallows its cancellation: a library call
that catches CancelledError (or a Python 3.11 race between a timeout and a cancel) and goes on looping.
Seen here: a worker's retry pump, cancelled at teardown, was found sleeping in its loop 5 s later; the
worker hung in its stop until it was SIGKILLed. A loop that swallowed one cancellation is not immune to
the next, so cancelling again every RECANCEL_EVERY ends it; past `grace`, the stragglers are logged and left
(the process exits anyway; nothing a background loop holds is lost by that, see each loop's own note).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("faultline.tasks")
RECANCEL_EVERY = 0.5  # s: well above a loop turn, so a task that honours the first cancel is never hit twice


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], grace: float = 5.0) -> list[asyncio.Task[Any]]:
    """Cancel `tasks` and wait until they end, cancelling again those still running every RECANCEL_EVERY;
    returns the ones still running after `grace` seconds (logged)."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            log.warning("tasks still running %.1fs after being cancelled: %s", grace,
                        ", ".join(sorted(t.get_name() for t in pending)))
            break
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_EVERY, left))
    for task in tasks:  # read each end, as gather(return_exceptions=True) did: no "never retrieved" noise
        if task.done() and not task.cancelled():
            task.exception()
    return list(pending)
