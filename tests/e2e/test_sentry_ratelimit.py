"""Given our 429 + Retry-After + X-Sentry-Rate-Limits, the real Python SDK stops
sending for exactly that long (its transport state and its lost-event records show it), then resumes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from faultline.stack import Stack
from tests.conftest import STACK_DRAIN_DELAY
from tests.e2e.sentry_support import dsn, groups, project_of
from tests.e2e.stack_checks import module_stack

pytestmark = pytest.mark.e2e
CLIENT = Path(__file__).resolve().parent / "sentry_clients" / "py_ratelimit_client.py"
WINDOW_S = 4


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"FAULTLINE_RATE_LIMIT_ENABLED": "true", "FAULTLINE_RATE_LIMITS": "short:100000/s",
           "FAULTLINE_RATE_LIMIT_ROUTES": f"POST /api/*=sentry:3/{WINDOW_S}s",
           "FAULTLINE_DRAIN_DELAY": STACK_DRAIN_DELAY}  # its node stops only at teardown
    with module_stack(tmp_path_factory.mktemp("sentry-rl"), "e2e_sentry_ratelimit", nodes=1, workers=1,
                      env=env) as (st, _):
        yield st


def test_python_sdk_backs_off_for_the_announced_time(stack: Stack, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(CLIENT), dsn(stack)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["was_limited"] and not out["still_limited"], out
    # All categories (None) disabled for the Retry-After we sent: a whole number of seconds within the window.
    assert set(out["disabled_for"]) == {"None"} and 0 < out["disabled_for"]["None"] <= WINDOW_S + 1, out
    # The 5 captured inside the window were dropped by the SDK itself ("ratelimit_backoff"), not sent.
    assert [x for x in out["lost_in_window"] if x.startswith("ratelimit_backoff")] == ["ratelimit_backoff:None"] * 5
    assert out["lost"] == out["lost_in_window"], "the event after the window was not sent"
    # The server counted the 3 sent before the limit and the one after it: nothing sent inside the window.
    project = project_of(stack, stack.ingest_key)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sum(g["count"] for g in groups(stack, "python", project)) < 4:
        time.sleep(0.2)
    assert [g["count"] for g in groups(stack, "python", project)] == [4]


def test_our_429_carries_integer_retry_after_and_sentry_limits(stack: Stack) -> None:
    url = f"{stack.url}/api/{project_of(stack, stack.ingest_key)}/envelope/"
    headers = {"X-Sentry-Auth": f"Sentry sentry_key={stack.ingest_key}"}
    with httpx.Client(timeout=10) as http:
        answers = [http.post(url, content=b'{}\n{"type":"session"}\n{}\n', headers=headers) for _ in range(5)]
    assert [r.status_code for r in answers][:3] == [200, 200, 200] or 429 in [r.status_code for r in answers]
    refused = [r for r in answers if r.status_code == 429]
    assert refused
    for r in refused:
        assert re.fullmatch(r"\d+", r.headers["retry-after"])
        assert re.fullmatch(r"\d+::key", r.headers["x-sentry-rate-limits"])
        assert int(r.headers["x-sentry-rate-limits"].split(":")[0]) == int(r.headers["retry-after"]) <= WINDOW_S
