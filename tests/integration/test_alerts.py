"""Alerts end to end: a real worker process, real Redis, the in-process API (its feed coalescer writes the
signals) and real local HTTP receivers. One alert per (rule, group) whatever the event rate; signed; a
receiver failing three times gets it once after growing delays; a receiver that never answers ends in the
dead-letter list."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from core.alerts import signals
from core.alerts.signing import DELIVERY_HEADER, HEADER, verify
from core.db import repo
from core.db.engine import make_engine
from core.keys import Keys
from core.redis import make_redis
from core.tasks import DELIVER_ALERT
from tests.integration.conftest import api_client, prepare
from tests.waiting import wait_for

OTHER_KEY = "test-other-key-0123456789abcdef"


@dataclass
class Hit:
    path: str
    at: float
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """/ok/<name> answers 200; /flaky 500 three times then 200; /hang accepts and never answers."""

    hits: list[Hit] = field(default_factory=list)
    port: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends the hanging answers at teardown

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path = request.path
        status = 200
        if path == "/flaky":
            status = 500 if sum(h.path == path for h in self.hits) < 3 else 200
        self.hits.append(Hit(path, time.monotonic(), dict(request.headers), body, status))
        if path == "/hang":
            await self.release.wait()
        return web.Response(status=status, text="ok" if status == 200 else "boom")

    def on(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.port = runner.addresses[0][1]
    yield rec
    rec.release.set()
    await runner.cleanup()


async def batch(client: Any, fingerprint: str, n: int, key: str | None = None) -> None:
    headers = {"X-Faultline-Key": key} if key else {}
    for start in range(0, n, 250):
        events = [{"message": f"{fingerprint} broke", "fingerprint": fingerprint, "service": "web"}
                  for _ in range(min(250, n - start))]
        r = await client.post("/errors/batch", json={"events": events}, headers=headers)
        assert r.status_code == 202, r.text


async def test_one_signed_alert_per_rule_and_group_retries_and_dead_letters(
        make_settings: Any, spawn: Any, receiver: Receiver) -> None:
    settings = make_settings(alert_allow_private_urls=True, alert_timeout=1.0, retry_base_delay=0.5,
                             retry_max_attempts=4, spike_warmup=1.0, alert_scan_interval=0.5)
    pid = await prepare(settings)
    engine = make_engine(settings)
    async with engine.begin() as conn:
        other, _ = await repo.ensure_project(conn, "other", OTHER_KEY)
        # a group the DB has known for a day: a "new" signal for it (back after idle pruning) alerts nobody
        await repo.upsert_groups(conn, [{"fingerprint": "old-group", "project_id": pid, "message": "old",
                                         "error_type": None, "service": "web", "level": "error",
                                         "first_seen": time.time() - 86_400, "last_seen": time.time() - 86_400}])
    await engine.dispose()
    redis = make_redis(settings, timeout=5)
    keys = Keys.from_settings(settings)
    spawn("worker-a", ["worker"], settings)

    async with api_client(settings) as c:
        secrets: dict[str, str] = {}
        plan = [("new_group", pid, "/ok/new", {}), ("regression", pid, "/ok/regression", {}),
                ("spike", pid, "/ok/spike", {"format": "slack"}),
                ("threshold", pid, "/ok/threshold", {"threshold": 100, "window_minutes": 2}),
                ("new_group", other, "/flaky", {}), ("new_group", other, "/hang", {})]
        for kind, project, path, extra in plan:
            r = await c.post("/api/alerts", json={"project_id": project, "kind": kind, "url": receiver.url(path),
                                                  **extra})
            assert r.status_code == 201, r.text
            secrets[path] = r.json()["secret"]
        rule_ids = {path: rule["id"] for rule in (await c.get("/api/alerts")).json()["items"]
                    for path in secrets if rule["url"] == receiver.url(path)}
        assert all("secret" not in rule for rule in (await c.get("/api/alerts")).json()["items"])
        async def counting() -> bool:  # the worker knows the rules and mirrored the threshold windows
            return bool(await redis.hexists(keys.alert_windows, str(pid)))

        await wait_for(counting, 40, "the worker to start and load the rules")
        await asyncio.sleep(signals.WINDOWS_REFRESH + 0.2)  # and the feed to count this project's minutes

        # project "other": one new group, for the failing receivers
        await batch(c, "other-group", 3, key=OTHER_KEY)
        # group A: 600 events at once -> one new_group, one threshold (>= 100 in 2 min)
        await batch(c, "group-a", 600)
        await signals.add(redis, keys, "new_group", pid, "old-group")
        await wait_for(lambda: _has(receiver, "/ok/new", 1), 20, "the new-group alert")
        await wait_for(lambda: _has(receiver, "/ok/threshold", 1), 20, "the threshold alert")
        # regression, as the worker that reopens a resolved group writes it; twice: a repeat sends nothing
        fp_a = orjson.loads(receiver.on("/ok/new")[0].body)["group"]["fingerprint"]
        for _ in range(2):
            await signals.add(redis, keys, "regression", pid, fp_a)
        await wait_for(lambda: _has(receiver, "/ok/regression", 1), 20, "the regression alert")
        # group B: watched for the warm-up at a low rate, then a burst -> one spike, however long it lasts
        for _ in range(8):
            await batch(c, "group-b", 1)
            await asyncio.sleep(0.2)
        for _ in range(4):
            await batch(c, "group-b", 500)
            await asyncio.sleep(0.3)
        await wait_for(lambda: _has(receiver, "/ok/spike", 1), 20, "the spike alert")
        await wait_for(lambda: _has(receiver, "/hang", 4), 30, "four attempts at the hanging receiver")

        async def dead() -> bool:
            return any(orjson.loads(d)["task_name"] == DELIVER_ALERT
                       for d in await redis.lrange(keys.dead_letters, 0, -1))

        await wait_for(dead, 15, "the hanging receiver's delivery in the dead-letter list")
        await asyncio.sleep(1.5)  # anything more (a duplicate) would arrive by now
        deliveries = (await c.get("/api/alerts/deliveries", params={"limit": 500})).json()["items"]

    def groups_of(path: str) -> list[str]:  # by message: the custom fingerprint is hashed into the real one
        return sorted(orjson.loads(h.body)["group"]["message"] for h in receiver.on(path))

    assert groups_of("/ok/new") == ["group-a broke", "group-b broke"]
    assert groups_of("/ok/threshold") == ["group-a broke", "group-b broke"]
    assert groups_of("/ok/regression") == ["group-a broke"]
    assert len(receiver.on("/ok/spike")) == 1
    spike = orjson.loads(receiver.on("/ok/spike")[0].body)
    assert "group-b broke" in spike["text"] and spike["blocks"]  # the Slack shape
    for hit in receiver.hits:
        assert verify(secrets[hit.path], hit.headers[HEADER], hit.body), hit.path
        assert not verify(secrets[hit.path], hit.headers[HEADER], hit.body + b" ")
    # 500, 500, 500, 200: one alert (one delivery id), after delays that grow
    flaky = receiver.on("/flaky")
    assert [h.status for h in flaky] == [500, 500, 500, 200]
    assert len({h.headers[DELIVERY_HEADER] for h in flaky}) == 1
    gaps = [b.at - a.at for a, b in itertools.pairwise(flaky)]
    assert gaps[0] < gaps[1] < gaps[2], gaps
    # every attempt is visible, with its status, error, latency
    by_rule = {path: sorted((d for d in deliveries if d["rule_id"] == rid), key=lambda d: d["attempt"])
               for path, rid in rule_ids.items()}
    assert [(d["status_code"], d["outcome"]) for d in by_rule["/flaky"]] == [
        (500, "retrying"), (500, "retrying"), (500, "retrying"), (200, "delivered")]
    hang = by_rule["/hang"]
    assert [d["outcome"] for d in hang] == ["retrying"] * 3 + ["dead"]
    assert all(d["status_code"] is None and "no answer" in d["error"] and d["latency_ms"] >= 900 for d in hang)
    await redis.aclose()


async def _has(receiver: Receiver, path: str, n: int) -> bool:
    return len(receiver.on(path)) >= n


async def test_rules_refuse_private_urls_and_bad_input_unless_allowed(make_settings: Any) -> None:
    settings = make_settings()
    pid = await prepare(settings)
    async with api_client(settings) as c:
        for url in ("http://127.0.0.1:9/x", "http://169.254.169.254/latest", "http://10.1.2.3/",
                    "http://[::1]/", "http://[::ffff:192.168.0.1]/", "http://localhost/", "ftp://example.com/x"):
            r = await c.post("/api/alerts", json={"project_id": pid, "kind": "new_group", "url": url})
            assert r.status_code == 422 and r.json()["error"] in ("unsafe_url", "invalid_request"), (url, r.text)
        r = await c.post("/api/alerts", json={"project_id": pid, "kind": "threshold", "url": "http://93.184.215.14/"})
        assert r.status_code == 422 and "window_minutes" in r.text
        r = await c.post("/api/alerts", json={"project_id": 999, "kind": "spike", "url": "http://93.184.215.14/"})
        assert r.status_code == 404
        assert (await c.delete("/api/alerts/12345")).status_code == 404
        assert (await c.get("/api/alerts", headers={"Authorization": "Bearer nope"})).status_code == 401
        r = await c.post("/api/alerts", json={"project_id": pid, "kind": "spike", "url": "http://93.184.215.14/"},
                         headers={"Authorization": ""})
        assert r.status_code == 401


async def test_cli_add_list_test_remove(make_settings: Any, receiver: Receiver, monkeypatch: Any,
                                        capsys: Any) -> None:
    from faultline.cli import main

    settings = make_settings(alert_allow_private_urls=True)
    await prepare(settings)
    # the stack's settings, as `faultline up`'s stack.json would give them (faultline/stackfile.py)
    monkeypatch.setattr("faultline.alerts.cli_settings", lambda: settings)

    async def cli(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        try:
            code = await asyncio.to_thread(main, list(argv))
        except SystemExit as exc:
            code = 2 if not isinstance(exc.code, int) else exc.code
            print(exc.code)
        return code, capsys.readouterr().out

    code, out = await cli("alert", "add", "--project", "test", "--kind", "threshold", "--threshold", "5",
                          "--window", "10", "--url", receiver.url("/cli"), "--format", "slack")
    secret = out.strip().splitlines()[-1]
    assert code == 0 and secret.startswith("whsec_")
    code, out = await cli("alert", "list")
    assert code == 0 and receiver.url("/cli") in out and ">= 5 in 10 min" in out and secret not in out
    rule_id = out.strip().splitlines()[-1].split()[0]
    code, out = await cli("alert", "test", rule_id)
    assert code == 0 and '"ok":true' in out
    [hit] = receiver.on("/cli")
    assert verify(secret, hit.headers[HEADER], hit.body) and orjson.loads(hit.body)["text"].startswith("Test alert")
    code, out = await cli("alert", "add", "--project", "test", "--kind", "threshold", "--url", receiver.url("/x"))
    assert code != 0 and "window_minutes" in out  # a threshold rule needs N and M
    assert (await cli("alert", "remove", rule_id))[0] == 0
    assert (await cli("alert", "remove", rule_id))[0] != 0
