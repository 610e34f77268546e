"""The batch writer re-runs a batch the server rolled back (lock conflict, Galera certification failure, lost
connection), a bounded number of times, and nothing else; a URL listing several hosts fails over along them."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from core import metrics
from core.db.failover import split_hosts
from core.db.repo import is_lock_conflict, is_transient
from core.db.rerun import rerun_reason
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
        settings = Settings(db_rerun_attempts=3, db_rerun_base_delay=0.001, db_rerun_max_delay=0.002)
        super().__init__(settings, engine=None, redis=None)  # type: ignore[arg-type]
        self.failures = failures
        self.calls = 0

    async def write(self, events: Any) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)


def reruns(reason: str) -> float:
    return metrics.DB_RERUNS.labels("persist_batch", reason)._value.get()


async def test_a_deadlocked_batch_is_written_again_at_once() -> None:
    before = reruns("1213"), reruns("1205")
    w = FlakyWriter([db_error(1213), db_error(1205)])
    await w._write_retrying_conflicts([])
    assert w.calls == 3
    assert (reruns("1213"), reruns("1205")) == (before[0] + 1, before[1] + 1)


async def test_a_batch_whose_connection_died_is_written_again() -> None:
    w = FlakyWriter([db_error(2013), db_error(1047)])
    await w._write_retrying_conflicts([])
    assert w.calls == 3


def test_what_may_run_again_and_what_is_transient() -> None:
    assert [rerun_reason(db_error(c)) for c in (1213, 1205, 2006, 2013, 1047)] == \
        ["1213", "1205", "connection", "connection", "connection"]
    assert rerun_reason(db_error(1062, IntegrityError)) is None
    assert rerun_reason(db_error(1406)) is None  # data too long: the same batch would fail again
    # past the reruns, a conflict is transient (parked and retried, never dead-lettered)
    assert is_transient(db_error(1213)) and is_transient(db_error(1047))
    assert not is_transient(db_error(1406))
    # a schema not migrated yet (a first start beside `faultline migrate`): wait, never dead-letter or die
    assert is_transient(db_error(1146)) and is_transient(db_error(1049))


def test_a_url_may_list_several_hosts() -> None:
    url = "mysql+asyncmy://fl:p%40ss@db-1:3306,db-2,10.0.0.3:3307/faultline?charset=utf8mb4"
    single, hosts = split_hosts(url)
    assert single == "mysql+asyncmy://fl:p%40ss@db-1:3306/faultline?charset=utf8mb4"
    assert hosts == [("db-1", 3306), ("db-2", None), ("10.0.0.3", 3307)]
    one = "mysql+asyncmy://fl:pw@db-1:3306/faultline"
    assert split_hosts(one) == (one, [])
    with pytest.raises(ValueError, match="empty host"):
        split_hosts("mysql+asyncmy://fl:pw@db-1,,db-2/faultline")


async def test_other_errors_and_endless_conflicts_still_fail() -> None:
    w = FlakyWriter([db_error(1062, IntegrityError)])
    with pytest.raises(IntegrityError):
        await w._write_retrying_conflicts([])
    assert w.calls == 1
    w = FlakyWriter([db_error(1213)] * 5)
    with pytest.raises(OperationalError):
        await w._write_retrying_conflicts([])
    assert w.calls == 3
