"""The chaos harness end to end on its cheapest fault: a fresh stack (MariaDB, Redis, 2 nodes behind nginx,
2 workers, a scheduler), 20 clients for a few seconds, a worker SIGKILLed twice and restarted by the
supervisor; the accounting then finds every accepted event counted exactly once in the DB (the unit tests in
tests/unit/test_chaos_accounting.py show the same accounting does report losses and duplicates)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.chaos import parse_args, run_fault
from tests.conftest import ARTIFACTS

pytestmark = [pytest.mark.e2e, pytest.mark.mariadb]


def test_worker_kills_under_load_lose_and_double_count_nothing(tmp_path: Path) -> None:
    # Reclaim a dead worker's messages after 3 s (default 15) and skip the nodes' drain delay: a short test.
    args = parse_args(["--only", "worker-kill", "--clients", "20", "--quick", "--before", "2", "--after", "3",
                       "--repeat", "2", "--env", "FAULTLINE_REDELIVER_AFTER=3",
                       "--env", "FAULTLINE_DRAIN_DELAY=0.2", "--nodes", "2"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with (ARTIFACTS / "test_chaos_harness.log").open("w") as logf:
        row = run_fault("worker-kill", args, tmp_path / "stack", lambda line: logf.write(line + "\n"))
    print(row["phase_s"], row["details"])
    assert row["info"]["restarted"] == 2 and row["worker_restarts"] == 2
    assert row["settled"], "queue, retries and pending counts never emptied"
    assert row["accepted"] > 100 and row["s202"] >= row["accepted"]
    assert row["lost"] == 0 and row["duplicated"] == 0, row["wrong_examples"]
    assert row["stored"] == row["accepted"]  # every accepted event, once
    assert row["refused_but_counted"] == 0 and row["dedup_misses"] == 0
    assert row["verdict"] == "OK"
