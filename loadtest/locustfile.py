"""Locust users for `make loadtest` (run headless by loadtest/run.py; settings come from LOADTEST_* env).

Each user posts one error (loadtest/payloads.py mix) then waits 1 s. Besides locust's own CSV files, every
request is tallied here by stage (users level), by 10 s window and, when accepted and not a duplicate, by
the fingerprint the server returned: run.py compares those tallies with the database afterwards.
"""

from __future__ import annotations

import json
import os
import random
import time
from array import array
from collections import Counter, defaultdict
from typing import Any

import orjson
from locust import LoadTestShape, constant, constant_throughput, events, task
from locust.contrib.fasthttp import FastHttpUser

from loadtest.payloads import PayloadMix
from loadtest.scenarios import stage_at, stages
from loadtest.stats import classify, summary

PLAN_NAME = os.environ.get("LOADTEST_SCENARIO", "ramp")
PLAN = stages(PLAN_NAME,
              stage_seconds=float(os.environ.get("LOADTEST_STAGE_SECONDS", "30")),
              duration=float(os.environ.get("LOADTEST_DURATION", "1800")),
              users=int(os.environ.get("LOADTEST_USERS", "200")))
KEY = os.environ.get("LOADTEST_KEY", "")
OUT = os.environ.get("LOADTEST_OUT", "loadtest-result.json")
WINDOW = 10.0  # seconds per drift window


class Tally:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.by_stage: dict[int, array[float]] = defaultdict(lambda: array("d"))
        self.status_by_stage: dict[int, Counter[str]] = defaultdict(Counter)
        self.by_window: dict[int, array[float]] = defaultdict(lambda: array("d"))
        self.users_by_window: dict[int, int] = {}
        self.accepted: Counter[str] = Counter()
        self.duplicates = 0
        self.retries = 0
        self.unknown = 0  # fresh events whose first attempt and retry both failed: counted or not, unknown

    def record(self, latency_ms: float, status: int, body: bytes, users: int,
               first_failed: bool = False) -> None:
        """One answer. `first_failed`: a retry of a fresh event whose first attempt got a 5xx or no answer;
        a "duplicate" then means that first attempt was counted by the server (e.g. Redis ran the script
        but the reply came after the node's redis_timeout), so it is tallied as accepted here."""
        elapsed = time.monotonic() - self.start
        stage = stage_at(PLAN, elapsed)
        stage = len(PLAN) - 1 if stage is None else stage
        window = int(elapsed // WINDOW)
        self.by_stage[stage].append(latency_ms)
        self.by_window[window].append(latency_ms)
        self.users_by_window[window] = max(users, self.users_by_window.get(window, 0))
        self.status_by_stage[stage][classify(status)] += 1
        if 200 <= status < 300:
            try:
                answer = orjson.loads(body)
            except orjson.JSONDecodeError:
                return
            if answer.get("duplicate") and not first_failed:
                self.duplicates += 1
            else:
                self.accepted[answer.get("fingerprint", "?")] += 1

    def dump(self, path: str) -> None:
        data: dict[str, Any] = {
            "plan": [[s.users, s.seconds, s.spawn_rate] for s in PLAN],
            "stages": {i: {"latencies_ms": summary(v), "status": dict(self.status_by_stage[i])}
                       for i, v in self.by_stage.items()},
            "windows": [{"t": w * WINDOW, "users": self.users_by_window.get(w, 0), **summary(v)}
                        for w, v in sorted(self.by_window.items())],
            "accepted_by_fingerprint": dict(self.accepted),
            "duplicates": self.duplicates,
            "retries": self.retries,
            "unknown_outcome": self.unknown,
        }
        with open(path, "w") as f:
            json.dump(data, f)


TALLY = Tally()


@events.test_start.add_listener
def _reset(**_: Any) -> None:
    TALLY.start = time.monotonic()


@events.quitting.add_listener
def _dump(**_: Any) -> None:
    TALLY.dump(OUT)


class ErrorReporter(FastHttpUser):
    # like a k6 VU: one request, then sleep(1); paced: one request per second on the clock (an open rate)
    wait_time = constant_throughput(1) if PLAN_NAME == "paced" else constant(1)
    # 30 s: past this a real SDK gives up; the client-side timeout shows up as a connection error
    network_timeout = 30.0
    connection_timeout = 30.0

    def on_start(self) -> None:
        self.mix = PayloadMix(random.getrandbits(32))
        self.headers = {"Content-Type": "application/json", **({"X-Faultline-Key": KEY} if KEY else {})}

    @task
    def log_error(self) -> None:
        body = self.mix.body().decode()
        fresh = not self.mix.last_was_repeat
        status = self.post(body, first_failed=False)
        if status == 0 or status >= 500:
            # As an SDK does: one retry of the same event (same event_id) after 1 s. Safe because ingest
            # is idempotent by event id; it is also how the client learns whether the first try counted.
            TALLY.retries += 1
            time.sleep(1.0)
            again = self.post(body, first_failed=fresh)
            if fresh and (again == 0 or again >= 500):
                TALLY.unknown += 1

    def post(self, body: str, first_failed: bool) -> int:
        with self.client.post("/errors/log", data=body, headers=self.headers, catch_response=True) as resp:
            status = resp.status_code or 0
            latency = float(resp.request_meta["response_time"])
            users = self.environment.runner.user_count if self.environment.runner else 0
            TALLY.record(latency, status, resp.content or b"", users, first_failed)
            if 200 <= status < 300:
                resp.success()
            else:
                resp.failure(f"HTTP {status}")
        return status


class ScenarioShape(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        i = stage_at(PLAN, self.get_run_time())
        if i is None:
            return None
        return PLAN[i].users, PLAN[i].spawn_rate
