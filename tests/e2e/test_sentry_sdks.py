"""The real Sentry SDKs (sentry-sdk for Python, @sentry/node run by node),
each in its own process with a DSN pointing at our nginx, produce exactly the groups Sentry users expect,
with exact counts, and report no dropped event."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.fingerprint import client_fingerprint
from core.sentry.grouping import group_key
from faultline.stack import Stack
from tests.conftest import STACK_DRAIN_DELAY
from tests.e2e.sentry_support import add_project, dsn, get_json, groups, project_of
from tests.e2e.stack_checks import module_stack

pytestmark = pytest.mark.e2e
CLIENTS = Path(__file__).resolve().parent / "sentry_clients"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with module_stack(tmp_path_factory.mktemp("sentry-sdks"), "e2e_sentry_sdks", nodes=2, workers=1,
                      env={"FAULTLINE_DRAIN_DELAY": STACK_DRAIN_DELAY}) as (st, _):  # nodes stop only at teardown
        yield st


def run_client(argv: list[str], cwd: Path) -> dict[str, Any]:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def settled_groups(stack: Stack, service: str, project: int, expected: dict[str, int]) -> list[dict[str, Any]]:
    """Wait until the worker wrote every group (counts are exact as soon as a group row exists)."""
    deadline = time.monotonic() + 30
    items: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        items = groups(stack, service, project)
        if len(items) >= len(expected) and sum(g["count"] for g in items) >= sum(expected.values()):
            break
        time.sleep(0.3)
    return items


CUSTOM = group_key({"fingerprint": ["payment-gateway"]}, [], None)  # what both clients set on 4 events


def check(project: int, items: list[dict[str, Any]], expected: dict[str, int]) -> None:
    """Groups by label: the custom-fingerprint group, the message group, else the exception type."""
    custom = client_fingerprint(project, CUSTOM)

    def label(g: dict[str, Any]) -> str:
        if g["fingerprint"] == custom:
            return "custom"
        return "message" if g["message"].startswith("checkout slow") else g["message"].split(":")[0]

    got = sorted((label(g), g["count"]) for g in items)
    assert got == sorted(expected.items()), got


def test_python_sdk_groups_and_counts(stack: Stack, tmp_path: Path) -> None:
    script = tmp_path / "app.py"  # under the SDK's project root (cwd): its frames are in-app
    shutil.copy(CLIENTS / "py_client.py", script)
    out = run_client([sys.executable, str(script), dsn(stack)], tmp_path)
    assert out["lost"] == [], out["lost"]
    assert len(out["sent"]) == 60 + 5 + 3 + 4
    expected = {"KeyError": 20, "ZeroDivisionError": 20, "TypeError": 20, "message": 5, "RuntimeError": 3,
                "custom": 4}
    project = project_of(stack, stack.ingest_key)
    items = settled_groups(stack, "python", project, expected)
    check(project, items, expected)
    # A sample keeps the chain with its frames; the group detail shows them.
    chained = next(g for g in items if g["message"].startswith("RuntimeError"))
    detail = get_json(stack, f"/errors/{chained['fingerprint']}")
    sentry = detail["samples"][0]["context"]["sentry"]
    assert [e["type"] for e in sentry["exception"]] == ["ConnectionError", "RuntimeError"]
    assert sentry["exception"][-1]["frames"][-1]["function"] == "save"
    assert sentry["release"] == "py-e2e@1" and sentry["sdk"]["name"] == "sentry.python"
    assert {s["event_id"] for s in detail["samples"]} <= set(out["sent"])


@pytest.mark.skipif(shutil.which("node") is None or not (REPO / "node_modules" / "@sentry" / "node").exists(),
                    reason="node or @sentry/node missing: run `npm install`")
def test_javascript_sdk_groups_and_counts(stack: Stack, tmp_path: Path) -> None:
    # Its own project: the message and custom-fingerprint groups would otherwise be the Python test's
    # (grouping is per project, not per SDK, as in Sentry).
    project, key = add_project(stack, "js-app")
    script = tmp_path / "app.js"
    shutil.copy(CLIENTS / "js_client.js", script)
    env_path = str(REPO / "node_modules")
    done = subprocess.run(["node", str(script), dsn(stack, key)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"NODE_PATH": env_path, "PATH": "/usr/bin:/bin:/usr/local/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["lost"] == [], out["lost"]
    assert len(out["sent"]) == 60 + 5 + 3 + 4 and set(out["statuses"]) == {200}, out["statuses"]
    expected = {"TypeError": 20, "RangeError": 20, "SyntaxError": 20, "message": 5, "Error": 3, "custom": 4}
    items = settled_groups(stack, "node", project, expected)
    check(project, items, expected)
    chained = next(g for g in items if g["message"].startswith("Error: could not save"))
    sample = get_json(stack, f"/errors/{chained['fingerprint']}")["samples"][0]["context"]["sentry"]
    assert len(sample["exception"]) == 2 and sample["sdk"]["name"] == "sentry.javascript.node"
