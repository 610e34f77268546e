"""The batch writer re-runs a batch InnoDB rolled back for a lock conflict, and nothing else."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from core.db.repo import is_lock_conflict
from core.settings import Settings
from workers.writer import BatchWriter


def db_error(code: int, cls: type = OperationalError) -> Exception:
    return cls("INSERT ...", {}, Exception(code, "from the server"))


def test_lock_conflicts_are_recognised() -> None:
    assert is_lock_conflict(db_error(1213))
    assert is_lock_conflict(db_error(1205))
    assert not is_lock_conflict(db_error(1062, IntegrityError))
    assert not is_lock_conflict(ValueError("bad data"))


class FlakyWriter(BatchWriter):
    def __init__(self, failures: list[Exception]) -> None:
        super().__init__(Settings(), engine=None, redis=None)  # type: ignore[arg-type]
        self.failures = failures
        self.calls = 0

    async def write(self, events: Any) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)


async def test_a_deadlocked_batch_is_written_again_at_once() -> None:
    w = FlakyWriter([db_error(1213), db_error(1205)])
    await w._write_retrying_conflicts([])
    assert w.calls == 3


async def test_other_errors_and_endless_conflicts_still_fail() -> None:
    w = FlakyWriter([db_error(1062, IntegrityError)])
    with pytest.raises(IntegrityError):
        await w._write_retrying_conflicts([])
    assert w.calls == 1
    w = FlakyWriter([db_error(1213)] * 5)
    with pytest.raises(OperationalError):
        await w._write_retrying_conflicts([])
    assert w.calls == 3
