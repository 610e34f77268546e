"""/metrics of a node with two uvicorn processes: counts from both processes, whichever one answers."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from typing import Any

import pytest

pytestmark = pytest.mark.e2e


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def _sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_aggregate_every_process_of_a_node(stack_factory: Any) -> None:
    stack = stack_factory(nodes=1, workers=1, node_workers=2)
    port = stack.node_ports[stack.nodes[0].name]
    base = f"http://127.0.0.1:{port}"
    for i in range(40):
        req = urllib.request.Request(f"{base}/errors/log", method="POST",
                                     data=json.dumps({"message": f"MetricError {i}"}).encode(),
                                     headers={"Content-Type": "application/json", "X-Faultline-Key": stack.ingest_key})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 202
    seen_pids: set[str] = set()
    deadline = time.monotonic() + 15
    # Scrape until both processes have reported their loop lag (each sets it 0.25 s after its own start-up,
    # which may finish after the node's first readiness answer); every scrape must agree on the counts.
    while len(seen_pids) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        text = _get(f"{base}/metrics")
        assert _sample(text, "http_requests_total", handler="/errors/log", method="POST") == 40
        assert _sample(text, "redis_operation_duration_seconds_count", op="ingest") == 40
        assert _sample(text, "faultline_events_total", outcome="accepted") == 40
        seen_pids.update(re.findall(r'event_loop_lag_seconds\{[^}]*pid="(\d+)"', text))
        for name in ("http_request_duration_seconds_bucket", "event_loop_lag_seconds", "faultline_queue_depth"):
            assert name in text, name
    assert len(seen_pids) >= 2  # both uvicorn processes report their loop lag
