"""Run a whole transaction again when the server rolled it back for a conflict or lost the connection.

InnoDB answers a deadlock with 1213 and a row-lock wait past innodb_lock_wait_timeout with 1205; Galera
answers 1213 at COMMIT when another node committed a write to the same rows first (certification failure),
or mid-statement when a replicated write aborts ours. Each time the server has rolled the transaction back
and nothing of it is kept, so the caller runs the WHOLE transaction again: every transaction given here is
idempotent (upserts of group details and samples) or guarded by a ledger row that commits with it (count
batches), so even a COMMIT whose answer was lost (connection gone: maybe committed, maybe not) is safe
to repeat. The attempts are bounded with the same equal-jitter backoff as every loop (core/backoff.py);
past them the error goes up as transient (core/db/repo.is_transient): retried later, never dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from core import metrics
from core.backoff import delay_for
from core.db.repo import error_code, is_lock_conflict, is_lost_connection
from core.settings import Settings

log = logging.getLogger("faultline.db")
T = TypeVar("T")


def rerun_reason(exc: BaseException) -> str | None:
    """Why the transaction may simply run again ("1213", "1205", "connection"), or None (it may not)."""
    if is_lock_conflict(exc):
        return str(error_code(exc))
    if is_lost_connection(exc):
        return "connection"
    return None


def _policy(settings: Settings | None) -> tuple[int, float, float]:
    if settings is None:  # the settings' defaults, without building Settings (production refuses that)
        fields = Settings.model_fields
        return (fields["db_rerun_attempts"].default, fields["db_rerun_base_delay"].default,
                fields["db_rerun_max_delay"].default)
    return settings.db_rerun_attempts, settings.db_rerun_base_delay, settings.db_rerun_max_delay


async def rerun_transaction(op: str, run: Callable[[], Awaitable[T]], settings: Settings | None = None) -> T:
    """`await run()` (one whole transaction), again after a conflict or a lost connection, at most
    `db_rerun_attempts` times in all. Counted in faultline_db_reruns_total{op, reason}."""
    attempts, base, cap = _policy(settings)
    attempt = 1
    while True:
        try:
            return await run()
        except Exception as exc:
            reason = rerun_reason(exc)
            if reason is None or attempt >= attempts:
                raise
            delay = delay_for(attempt, base, cap)
            metrics.DB_RERUNS.labels(op, reason).inc()
            log.info("%s: transaction rolled back (%s), running it again in %.3fs (attempt %d of %d)",
                     op, reason, delay, attempt + 1, attempts)
            attempt += 1
            await asyncio.sleep(delay)
