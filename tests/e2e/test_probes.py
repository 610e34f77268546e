"""Probes on the real local stack (2 API nodes behind nginx, Redis, SQLite, no workers so the queue only
grows): terminus bodies; readiness that reflects the node only (drain, event loop), never what every node
shares: past the queue's soft AND hard limits, and with Redis stopped, every node stays ready while ingest
sheds with a fast 503 + Retry-After; liveness ignores a Redis outage; a drain makes that one node unready
from its first instant, while it still serves, and no other.
"""

from __future__ import annotations

import signal
import time
import urllib.request
import uuid
from collections.abc import Iterator
from email.message import Message

import orjson
import pytest
import redis

from core.keys import Keys
from faultline.stack import Stack
from tests.e2e.stack_checks import module_stack, node_get, report

pytestmark = pytest.mark.e2e
SOFT, HARD = 20, 40
DRAIN_DELAY = 3.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, list[str]]]:
    env = {"FAULTLINE_QUEUE_SOFT_LIMIT": str(SOFT), "FAULTLINE_QUEUE_HARD_LIMIT": str(HARD),
           "FAULTLINE_DRAIN_DELAY": str(DRAIN_DELAY)}
    with module_stack(tmp_path_factory.mktemp("probes"), "test_probes", nodes=2, workers=0, schedulers=0,
                      env=env) as pair:
        yield pair


def _ports(stack: Stack) -> list[int]:
    return [stack.node_ports[n.name] for n in stack.nodes]


def _ingest(url: str, key: str) -> tuple[int, Message, dict[str, object]]:
    body = orjson.dumps({"event_id": uuid.uuid4().hex, "message": "probe test", "fingerprint": "probe"})
    req = urllib.request.Request(url + "/errors/log", data=body, method="POST",
                                 headers={"X-Faultline-Key": key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, orjson.loads(e.read())
    except urllib.error.URLError:  # the draining node closed its listener between the probe and this call
        return 0, Message(), {}


def _redis(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.settings().redis_url)


def test_bodies_have_the_terminus_shape(stack: tuple[Stack, list[str]]) -> None:
    s, _ = stack
    port = _ports(s)[0]
    status, live = node_get(port, "/health/live", token=s.admin_token)
    assert status == 200 and live["status"] == "ok"
    assert set(live) == {"status", "info", "error", "details"}
    assert live["details"]["memory"]["rss_mb"] < live["details"]["memory"]["limit_mb"]
    assert live["details"]["event_loop"]["lag_ms"] >= 0
    status, ready = node_get(port, "/health/ready", token=s.admin_token)
    assert status == 200 and ready["error"] == {}
    assert set(ready["details"]) == {"drain", "event_loop", "redis", "queue", "database", "disk"}
    queue = ready["details"]["queue"]
    assert {"waiting", "pending", "retrying", "dead", "backpressure"} <= set(queue)
    assert ready["details"]["database"]["status"] == "up"
    status, both = node_get(port, "/health", token=s.admin_token)
    assert status == 200 and {"event_loop", "memory", "redis", "queue"} <= set(both["details"])


StackLog = tuple[Stack, list[str]]


def test_queue_limits_shed_ingest_and_keep_every_node_ready(stack: StackLog) -> None:
    s, _ = stack
    r = _redis(s)
    keys = Keys.from_settings(s.settings())
    answers = [_ingest(s.url, s.ingest_key) for _ in range(SOFT + 5)]
    codes = [a[0] for a in answers]
    assert codes[:SOFT] == [202] * SOFT, codes  # no worker runs: each accepted event stays queued
    shed = answers[SOFT:]
    assert all(code == 503 for code, _, _ in shed), codes
    assert all(h.get("Retry-After") for _, h, _ in shed)
    assert shed[0][2]["error"] == "backpressure"
    for port in _ports(s):
        status, ready = node_get(port, "/health/ready", token=s.admin_token)
        assert status == 200, ready  # over the soft limit: reported, still ready
        assert ready["details"]["queue"]["backpressure"] is True
        assert ready["details"]["queue"]["waiting"] == SOFT
    for _ in range(HARD - SOFT):
        r.xadd(keys.stream, {"data": b"{}"})  # stand-in backlog (no worker reads it)
    for port in _ports(s):
        status, ready = node_get(port, "/health/ready", token=s.admin_token)
        # reported (not required): the queue is the same for every node, taking them all out is an outage
        assert status == 200 and ready["error"]["queue"]["waiting"] == HARD, ready
        assert ready["error"]["queue"]["required"] is False
        assert node_get(port, "/health/live")[0] == 200
    code, headers, body = _ingest(s.url, s.ingest_key)
    assert code == 503 and headers.get("Retry-After") and body["error"] == "backpressure"
    r.xtrim(keys.stream, maxlen=0)
    assert all(node_get(port, "/health/ready")[0] == 200 for port in _ports(s))
    r.close()


def test_redis_down_every_node_stays_ready_and_ingest_sheds_fast(stack: tuple[Stack, list[str]]) -> None:
    s, _ = stack
    assert s.redis is not None
    s.redis.stop()
    try:
        for port in _ports(s):
            status, ready = node_get(port, "/health/ready", token=s.admin_token)
            # a Redis blip must not empty every endpoint at once (the read API and the feed go on)
            assert status == 200 and ready["error"]["redis"]["status"] == "down", ready
            assert ready["error"]["redis"]["required"] is False
            status, live = node_get(port, "/health/live")
            assert status == 200, live  # nor restart every pod
            assert node_get(port, "/health")[0] == 503  # the page for people shows the outage
            sent = time.monotonic()
            code, headers, body = _ingest(f"http://127.0.0.1:{port}", s.ingest_key)
            took = time.monotonic() - sent
            report(f"\nRedis down: ingest on node :{port} answered {code} in {took * 1000:.0f} ms")
            assert code == 503 and int(headers["Retry-After"]) >= 1, body  # shed by the app: not counted
            assert set(body) >= {"error", "message"}
            # "fast": inside the ingest budget plus the request's own overhead, far below a client's timeout
            assert took < s.settings().ingest_budget + 2
        code, headers, _ = _ingest(s.url, s.ingest_key)  # through the edge: the app's 503, not nginx's
        assert code == 503 and headers.get("Retry-After")
    finally:
        s.redis.start()
    deadline = time.monotonic() + 20
    while any(node_get(p, "/health/ready")[0] != 200 for p in _ports(s)):
        assert time.monotonic() < deadline, "readiness did not come back after Redis did"
        time.sleep(0.2)


def test_readiness_503_from_the_first_instant_of_drain_while_still_serving(stack: StackLog) -> None:
    s, lines = stack
    node = s.nodes[-1]
    port = s.node_ports[node.name]
    status, body = node_get(port, "/health/ready")
    assert status == 200, body
    others = [p for p in _ports(s) if p != port]
    assert others
    sent = time.monotonic()
    node.signal(signal.SIGTERM)
    probes: list[tuple[float, int | None, dict[str, object]]] = []
    others_seen: list[int | None] = []
    served_while_draining = 0
    while node.alive() and time.monotonic() - sent < 30:
        status, body = node_get(port, "/health/ready", timeout=1, token=s.admin_token)
        probes.append((time.monotonic() - sent, status, body))
        others_seen += [node_get(p, "/health/ready", timeout=1)[0] for p in others]
        if status == 503 and _ingest(f"http://127.0.0.1:{port}", s.ingest_key)[0] == 202:
            served_while_draining += 1
        time.sleep(0.02)
    assert node.proc is not None
    code = node.proc.wait(timeout=30)
    took = time.monotonic() - sent
    answered = [p for p in probes if p[1] is not None]
    first_503 = next(i for i, p in enumerate(answered) if p[1] == 503)
    assert all(p[1] == 200 for p in answered[:first_503])  # before SIGTERM reached the worker
    assert all(p[1] == 503 for p in answered[first_503:]), "readiness came back during a drain"
    assert others_seen and set(others_seen) == {200}, "another node's readiness changed with this drain"
    drain = answered[first_503][2]["details"]["drain"]  # type: ignore[index]
    report(f"\nfirst 503 {answered[first_503][0]:.3f}s after kill, drain age then {drain['since_s']}s; "
          f"{served_while_draining} ingest requests served while draining; exit {code} after {took:.2f}s")
    assert drain["state"] == "draining" and drain["since_s"] < 0.5
    assert served_while_draining > 0  # kept serving through the drain delay
    assert code == 0 and took < s.settings().shutdown_timeout
    log = "\n".join(line for line in lines if line.startswith(node.name))
    for phase in ("drain delay", "stop accepting", "reconnect clients", "finish in-flight", "flush",
                  "close pools"):
        assert f"shutdown phase {phase}" in log, phase
    assert "drain: stopped" in log
    s.nodes.remove(node)
