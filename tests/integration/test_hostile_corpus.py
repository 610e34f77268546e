"""A hostile corpus against a real API node (gunicorn + uvicorn + httptools, real Redis, SQLite).

Each request must be answered with its expected status and a JSON body, within 100 ms of the node's CPU
(user + system time of the node's processes, read from /proc before and after, so the figure is what the
node spent, not what this crowded test machine's scheduler made of it), while a thread polls /health/live
on the same node: every poll must answer within 50 ms, so no request stalls the event loop.
Shapes: deep nesting (within orjson's limits and past them), pathological regex inputs (newlines, "a-",
runs of spaces/dots/@/quotes/digits, huge lines, alternations of the patterns' own syntax), also as a
~1 MB batch, NUL bytes, lone surrogates, invalid UTF-8, huge numbers, duplicate keys, unknown fields, wrong
types, 1 MB headers.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import psutil
import pytest
import requests

from core.settings import Settings
from faultline.services import free_port, wait_http_ok
from tests.integration.conftest import INGEST_KEY, prepare

CPU_BUDGET_S = 0.100
LIVE_BUDGET_S = 0.050
# The 50 ms bound is wall time, which CPU contention stretches whatever the node does: when the machine runs
# more than one runnable process per core (the shared test machine often runs ~10), a request's few ms of CPU
# take several times that in wall time. Then only a real stall is checked for (the old fingerprinting
# stalled for seconds); the figure is printed either way.
OVERLOADED_LIVE_BUDGET_S = 1.0
JSON = {"Content-Type": "application/json", "X-Faultline-Key": INGEST_KEY}


def nest(depth: int) -> bytes:
    """JSON text of `depth` nested containers (arrays and objects in turn), built as bytes: the JSON
    libraries refuse to serialise that deep."""
    opening = [b"[" if i % 2 == 0 else b'{"k": ' for i in range(depth)]
    closing = [b"]" if i % 2 == 0 else b"}" for i in reversed(range(depth))]
    return b"".join(opening) + b"1" + b"".join(closing)


def with_context(context: bytes, message: bytes = b"m") -> bytes:
    return b'{"message": "' + message + b'", "context": {"a": ' + context + b"}}"


def log(body: Any) -> bytes:
    return body if isinstance(body, bytes) else orjson.dumps(body)


def batch_of(message: str, limit: int = 1_000_000) -> bytes:
    """As many copies of the event as fit in ~1 MB (the default body limit is 1 MiB)."""
    one = orjson.dumps({"message": message})
    return b'{"events": [' + b",".join([one] * min(1000, limit // (len(one) + 1))) + b"]}"


REGEX_SHAPES: dict[str, str] = {
    "newlines": "\n" * 65_000, "blank lines": " \n" * 32_000, "a-": "a-" * 4096, "spaces": " " * 8000 + "x",
    "dots": "." * 8190, "at signs": "@" * 8190, "single quotes": "'" * 8191, "double quotes": '"' * 8191,
    "digits": "1" * 8190 + "a", "email-ish": "a@b.c@" * 1360, "ip-ish": "1.2.3.4:" * 1000 + "a",
    "hex-ish": "0x1a-" * 1600 + "g", "uuid-ish": "deadbeef-" * 900, "quote mix": "'a\"" * 2700,
    "python frames": 'File "a", line 1, in ' * 380, "js frames": "at a:1 " * 1150, "java frames": "a(b" * 2700,
    "error types": "aError." * 1170, "word boundaries": "1a-" * 2730,
}
# (name, path, body, headers, expected status, check of the JSON answer)
Case = tuple[str, str, bytes, dict[str, str], int, Any]
CASES: list[Case] = [
    ("context 40 levels", "/errors/log", with_context(nest(40)), JSON, 422,
     lambda b: b["details"][0]["field"] == "context" and "deeper than 32" in b["details"][0]["problem"]),
    ("context 300 levels (past orjson's 254)", "/errors/log", with_context(nest(300)), JSON,
     422, lambda b: b["details"][0]["field"] == "context"),
    ("context 5000 levels (past orjson's parser)", "/errors/log", with_context(nest(5000)), JSON, 422,
     lambda b: b["error"] == "nesting_too_deep" and b["details"]["field"].startswith("context")),
    ("batch: one deep event", "/errors/batch",
     b'{"events": [{"message": "ok 1"}, ' + with_context(nest(100)) + b', {"message": "ok 2"}]}', JSON, 202,
     lambda b: [r["status"] for r in b["results"]] == ["queued", "invalid", "queued"]
     and b["results"][1]["errors"][0]["field"] == "context"),
    ("NUL in message", "/errors/log", log({"message": "a\u0000b"}), JSON, 422,
     lambda b: b["details"][0]["field"] == "message"),
    ("NUL in context", "/errors/log", log({"message": "m", "context": {"k": ["x\u0000"]}}), JSON, 422,
     lambda b: b["details"][0]["field"] == "context" and "NUL" in b["details"][0]["problem"]),
    ("lone surrogate", "/errors/log", b'{"message": "a\\ud800b"}', JSON, 400, lambda b: b["error"]),
    ("invalid utf-8", "/errors/log", b'{"message": "a\xff\xfeb"}', JSON, 400, lambda b: b["error"] == "invalid_utf8"),
    ("int past 64 bits", "/errors/log", b'{"message": "m", "context": {"n": 123456789012345678901234567890}}',
     JSON, 422, lambda b: "64 bits" in b["details"][0]["problem"] or "out of range" in b["details"][0]["problem"]),
    ("1e999", "/errors/log", b'{"message": "m", "context": {"n": 1e999}}', JSON, 400, lambda b: b["error"]),
    ("duplicate keys: last wins", "/errors/log", b'{"message": "first", "message": "TypeError: last"}', JSON,
     202, lambda b: b["status"] == "queued"),
    ("unknown field", "/errors/log", log({"message": "m", "stacktrace": "x"}), JSON, 422,
     lambda b: b["details"][0]["field"] == "stacktrace" and "unknown field" in b["details"][0]["problem"]),
    ("wrong types", "/errors/log", log({"message": 5, "level": 3, "context": "x"}), JSON, 422,
     lambda b: {d["field"] for d in b["details"]} == {"message", "level", "context"}),
    ("batch of wrong types", "/errors/batch", log({"events": [1, "x", None, {"message": "ok"}]}), JSON, 202,
     lambda b: b["invalid"] == 3 and b["results"][3]["status"] == "queued"),
    ("1 MB X-Request-ID", "/errors/log", log({"message": "m"}), {**JSON, "X-Request-ID": "a" * 1_000_000}, 202,
     lambda b: b["status"] == "queued"),
    ("1 MB X-Forwarded-For", "/errors/log", log({"message": "m"}),
     {**JSON, "X-Forwarded-For": "1.2.3.4," * 125_000}, 202, lambda b: b["status"] == "queued"),
    ("1 MB X-Faultline-Key", "/errors/log", log({"message": "m"}), {**JSON, "X-Faultline-Key": "k" * 1_000_000},
     401, lambda b: b["error"] == "invalid_key"),
    ("1 MB X-Edge-Request-ID", "/errors/log", log({"message": "m"}),
     {**JSON, "X-Edge-Request-ID": "e" * 1_000_000}, 202, lambda b: b["status"] == "queued"),
]
for _name, _text in REGEX_SHAPES.items():
    CASES.append((f"message: {_name}", "/errors/log", log({"message": _text[:8192]}), JSON, 202,
                  lambda b: b["status"] == "queued"))
    CASES.append((f"stack: {_name}", "/errors/log", log({"message": "m", "stack": _text}), JSON, 202,
                  lambda b: b["status"] == "queued"))
    CASES.append((f"1 MB batch of messages: {_name}", "/errors/batch", batch_of(_text[:8192]), JSON, 202,
                  lambda b: b["invalid"] == 0))


@pytest.fixture
def node(make_settings: Any, spawn: Any) -> Iterator[tuple[str, psutil.Process]]:
    # drain 0 s: the node is stopped only at teardown, with nothing left to serve
    s: Settings = make_settings(queue_soft_limit=10_000_000, queue_hard_limit=20_000_000, drain_delay=0)
    asyncio.run(prepare(s))
    port = free_port()
    child = spawn("api-hostile", ["api", "--port", str(port)], s)
    base = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{base}/health/ready", timeout=60)
    yield base, psutil.Process(child.pid)


def cpu_of(master: psutil.Process) -> float:
    total = 0.0
    for proc in [master, *master.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


class LivePoller(threading.Thread):
    """GET /health/live back to back on its own keep-alive connection; keeps every latency."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base, self.latencies, self.failures = base, [], []  # type: ignore[var-annotated]
        self.stop = threading.Event()

    def run(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                ok = session.get(f"{self.base}/health/live", timeout=2).status_code == 200
            except requests.RequestException as exc:
                ok = False
                self.failures.append(repr(exc))
            self.latencies.append(time.perf_counter() - started)
            if not ok:
                self.failures.append("not 200")
            time.sleep(0.02)  # often enough to catch any stall past 50 ms


def test_hostile_corpus_is_answered_cheaply_and_never_stalls_the_node(node: tuple[str, psutil.Process]) -> None:
    base, master = node
    session = requests.Session()
    session.post(f"{base}/errors/log", data=log({"message": "warm-up"}), headers=JSON, timeout=10)
    poller = LivePoller(base)
    poller.start()
    figures: list[tuple[float, str]] = []
    failures: list[str] = []
    try:
        for name, path, body, headers, status, check in CASES:
            before = cpu_of(master)
            r = session.post(f"{base}{path}", data=body, headers=headers, timeout=10)
            spent = cpu_of(master) - before
            figures.append((spent, name))
            answer = r.json() if r.headers.get("content-type", "").startswith("application/json") else None
            if r.status_code != status or answer is None or not check(answer):
                failures.append(f"{name}: {r.status_code} {r.text[:300]}")
            if spent > CPU_BUDGET_S:
                failures.append(f"{name}: {spent * 1000:.0f} ms of node CPU")
    finally:
        poller.stop.set()
        poller.join(timeout=5)
    figures.sort(reverse=True)
    worst_live = max(poller.latencies)
    print(f"\n{len(CASES)} requests; most node CPU: "
          + ", ".join(f"{name} {spent * 1000:.0f} ms" for spent, name in figures[:5])
          + f"; /health/live: {len(poller.latencies)} polls, max {worst_live * 1000:.1f} ms; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    assert not failures, failures
    assert not poller.failures, poller.failures[:5]
    assert len(poller.latencies) >= 20  # it really polled throughout
    overloaded = os.getloadavg()[0] > (os.cpu_count() or 1)
    budget = OVERLOADED_LIVE_BUDGET_S if overloaded else LIVE_BUDGET_S
    # 95 % of the polls within the budget, and none past twice it: the test process, the node and the poller
    # share 2 cores, so one poll can lose a scheduler slice to the sender; a stalled loop loses them all.
    p95 = sorted(poller.latencies)[int(len(poller.latencies) * 0.95)]
    assert p95 <= budget and worst_live <= 2 * budget, (f"load {os.getloadavg()}", sorted(poller.latencies)[-10:])
