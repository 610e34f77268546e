"""Live feed on the real stack: 3 API nodes (gunicorn + uvicorn), nginx, redis-server, workers, scheduler.

One stack for the module (starting one costs ~10 s on this 2-core box). Subscriptions, live updates, exact
totals and bad input; SIGTERM of the client's node kills a node, so it has its own stack in test_feed_drain.py.
The triage pages (group page, resolve, regressed) share this stack: they are the same dashboard.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio

from core.keys import Keys
from core.redis import make_redis
from faultline.procs import FileSink
from faultline.stack import Stack, StackConfig
from tests.browser import chromium
from tests.conftest import ARTIFACTS, STACK_DRAIN_DELAY
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e
DASHBOARD_TOKEN = "dashboard-token-0123456789"


class FeedClient:
    """A python-socketio client that keeps a view like the dashboard does: snapshot on every (re)connect,
    then error:new / error:count, merged with max(total)."""

    def __init__(self, url: str, token: str, rooms: list[str] | None = None) -> None:
        self.url, self.token, self.rooms = url, token, rooms or ["project:*"]
        self.sio = socketio.AsyncClient(reconnection=True, reconnection_delay=0.2, reconnection_delay_max=1)
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.view: dict[str, int] = {}
        self.deltas: dict[str, int] = {}
        self.nodes: list[str] = []
        self.subscribed = asyncio.Event()
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        for name in ("error:new", "error:count", "error:spike", "feed:reconnect"):
            self.sio.on(name, self._recorder(name))

    def _recorder(self, name: str) -> Any:
        async def record(data: dict[str, Any]) -> None:
            self.events.append((time.monotonic(), name, data))
            if name == "error:new":
                for g in data["groups"]:
                    self.view[g["fingerprint"]] = max(self.view.get(g["fingerprint"], 0), g["count"])
            elif name == "error:count":
                for c in data["counts"]:
                    self.view[c["fingerprint"]] = max(self.view.get(c["fingerprint"], 0), c["total"])
                    self.deltas[c["fingerprint"]] = self.deltas.get(c["fingerprint"], 0) + c["delta"]
        return record

    async def _on_connect(self) -> None:
        # from the connect handler: a background task, as the ack needs the client's event loop running
        asyncio.get_running_loop().create_task(self._subscribe())

    async def _subscribe(self) -> None:
        ack = await self.sio.call("subscribe", {"rooms": self.rooms}, timeout=10)
        assert ack["ok"], ack
        self.nodes.append(ack["node"])
        for g in ack["snapshot"]:
            self.view[g["fingerprint"]] = max(self.view.get(g["fingerprint"], 0), g["count"])
        self.subscribed.set()

    async def _on_disconnect(self, *_: Any) -> None:
        self.subscribed.clear()
        if any(n == "feed:reconnect" for _, n, _ in self.events[-5:]):
            # told to go: the server's close was a graceful one, which python-socketio does not retry
            asyncio.get_running_loop().create_task(self._come_back())

    async def _come_back(self) -> None:
        for _ in range(100):
            await asyncio.sleep(0.2)  # let the client finish tearing the old connection down
            try:
                await self.sio.connect(self.url, transports=["websocket"], auth={"token": self.token},
                                       wait_timeout=5)
                return
            except socketio.exceptions.ConnectionError:
                continue

    async def connect(self, url: str | None = None) -> FeedClient:
        await self.sio.connect(url or self.url, transports=["websocket"], auth={"token": self.token},
                               wait_timeout=10)
        await asyncio.wait_for(self.subscribed.wait(), 10)
        return self

    def named(self, name: str) -> list[dict[str, Any]]:
        return [d for _, n, d in self.events if n == name]


def start_stack(base: Path, log_name: str, **env: str) -> Stack:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    sink = FileSink(ARTIFACTS / log_name)
    env = {"FAULTLINE_RATE_LIMIT_ENABLED": "false", "FAULTLINE_DASHBOARD_TOKEN": DASHBOARD_TOKEN,
           "FAULTLINE_DRAIN_DELAY": STACK_DRAIN_DELAY, **env}
    return Stack(StackConfig(base_dir=base, port=0, sink=sink, env=env)).start()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("feed"), "test_feed.log")
    yield s
    s.stop()


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.url, headers={"X-Faultline-Key": stack.ingest_key},
                                 timeout=10) as client:
        yield client


def node_url(stack: Stack, name: str) -> str:
    return f"http://127.0.0.1:{stack.node_ports[name]}"


async def live_totals(stack: Stack) -> dict[str, int]:
    redis = make_redis(stack.settings(), timeout=5)
    try:
        raw = await redis.hgetall(Keys.from_settings(stack.settings()).live_counts)  # type: ignore[misc]
        return {k.decode(): int(v) for k, v in raw.items()}
    finally:
        await redis.aclose()


async def test_error_new_and_count_reach_a_client_on_another_node_within_500ms(
        stack: Stack, http: httpx.AsyncClient) -> None:
    client = await FeedClient(stack.url, stack.admin_token).connect()  # through nginx: some node
    try:
        home = client.nodes[0]
        others = [n.name for n in stack.nodes if n.name != home]
        assert len(others) == 2
        latencies: list[float] = []
        sent: dict[str, int] = {}
        for round_ in range(3):
            for name in others:
                tag = f"p1-{name}-{round_}-{uuid.uuid4().hex[:6]}"
                for i in range(3):
                    r = await http.post(f"{node_url(stack, name)}/errors/log",
                                        json={"message": f"checkout failed {tag}", "service": "checkout",
                                              "fingerprint": tag})
                    assert r.status_code == 202, r.text
                    fp = r.json()["fingerprint"]
                    if i == 0:
                        posted = time.monotonic()
                        while not any(g["fingerprint"] == fp for d in client.named("error:new")
                                      for g in d["groups"]):
                            assert time.monotonic() - posted < 3, "no error:new after 3 s"
                            await asyncio.sleep(0.005)
                        latencies.append(time.monotonic() - posted)
                sent[fp] = 3
        deadline = time.monotonic() + 3
        while any(client.view.get(fp) != n for fp, n in sent.items()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert {fp: client.view.get(fp) for fp in sent} == sent
        for fp in sent:  # per group: error:new first, then counts with increasing totals summing exactly
            seq = [(n, d) for _, n, d in client.events
                   if any(x.get("fingerprint") == fp for x in d.get("groups", d.get("counts", [])))]
            assert seq[0][0] == "error:new"
            totals = [c["total"] for n, d in seq if n == "error:count" for c in d["counts"] if c["fingerprint"] == fp]
            assert totals == sorted(set(totals)) and totals[-1] == 3
            assert client.deltas[fp] == 3
        print(f"\nerror:new latency over {len(latencies)} groups: p50 {statistics.median(latencies) * 1000:.0f} ms,"
              f" max {max(latencies) * 1000:.0f} ms")
        assert max(latencies) < 0.5
    finally:
        await client.sio.disconnect()


async def test_5000_events_per_second_give_a_bounded_number_of_messages_and_exact_sums(
        stack: Stack, http: httpx.AsyncClient) -> None:
    # one client per node, connected to the nodes directly: each must see the other nodes' ingest
    clients = [await FeedClient(node_url(stack, n.name), stack.admin_token).connect() for n in stack.nodes]
    try:
        run = uuid.uuid4().hex[:6]
        tags = [f"load-{run}-{i}" for i in range(20)]
        # batches of 50 (~6 KB): larger bodies spill to nginx's temp dir, which pytest's 0700 tmp dirs
        # make unreachable to nginx's `nobody` workers when the tests run as root
        rate, seconds, batch = 5000, 5, 50
        sent: dict[str, int] = {}
        fps: dict[str, str] = {}
        start = time.monotonic()

        async def send(k: int) -> None:
            events = [{"message": f"db timeout {tags[(k * batch + j) % len(tags)]}", "service": "db",
                       "fingerprint": tags[(k * batch + j) % len(tags)], "level": "warning"}
                      for j in range(batch)]
            r = await http.post("/errors/batch", json={"events": events})
            assert r.status_code == 202, r.text
            for ev, res in zip(events, r.json()["results"], strict=True):
                fps[ev["fingerprint"]] = res["fingerprint"]
                sent[res["fingerprint"]] = sent.get(res["fingerprint"], 0) + 1

        pending = []
        for k in range(rate * seconds // batch):  # paced: one batch of 50 every 10 ms
            await asyncio.sleep(max(0.0, start + k * batch / rate - time.monotonic()))
            pending.append(asyncio.create_task(send(k)))
        await asyncio.gather(*pending)
        took = time.monotonic() - start
        total = sum(sent.values())
        assert total == rate * seconds
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(c.view.get(fp) != n for c in clients for fp, n in sent.items()):
            await asyncio.sleep(0.1)
        redis_totals = await live_totals(stack)
        for c in clients:
            assert {fp: c.view.get(fp) for fp in sent} == sent
            assert {fp: c.deltas.get(fp) for fp in sent} == sent  # deltas sum exactly: nothing counted twice
        assert {fp: redis_totals[fp] for fp in sent} == sent
        window = took + 1.0
        # <= 3 messages (new, count, spike) per 250 ms tick per room, so <= 12/s; typically 4/s
        bound = 3 * (window / stack.settings().feed_interval + 4)
        per_client = [len([e for e in c.events if e[0] >= start]) for c in clients]
        print(f"\n{total} events in {took:.1f} s ({total / took:.0f}/s); messages per client {per_client} "
              f"(bound {bound:.0f}); ratio events/messages {total / max(per_client):.0f}")
        assert max(per_client) <= bound
    finally:
        for c in clients:
            await c.sio.disconnect()


async def test_bad_tokens_are_refused_with_a_reason_and_forbidden_rooms_refused(stack: Stack) -> None:
    for auth, reason in (({}, "missing_token"), ({"token": "wrong-token"}, "invalid_token")):
        sio = socketio.AsyncClient(reconnection=False)
        errors: list[Any] = []
        sio.on("connect_error", lambda data, errors=errors: errors.append(data))
        with pytest.raises(socketio.exceptions.ConnectionError):
            await sio.connect(stack.url, transports=["websocket"], auth=auth, wait_timeout=5)
        assert errors and errors[0]["message"].startswith(reason), errors
    scoped = await FeedClient(stack.url, DASHBOARD_TOKEN).connect()
    try:
        sio = scoped.sio
        assert (await sio.call("subscribe", {"rooms": ["project:999"]}, timeout=5))["error"] == "forbidden"
        for bad in ("garbage", {"rooms": "project:1"}, {"rooms": ["nope"]}, {"rooms": [1]}, None):
            answer = await sio.call("subscribe", bad, timeout=5)
            assert answer["ok"] is False and answer["error"] == "bad_request", (bad, answer)
        assert (await sio.call("no-such-event", {"x": 1}, timeout=5))["error"] == "unknown_event"
        ok = await sio.call("subscribe", {"rooms": ["service:1:checkout"]}, timeout=5)  # handler still alive
        assert ok["ok"] and ok["rooms"] == ["service:1:checkout"]
    finally:
        await scoped.sio.disconnect()
    assert "socket refused from" in (ARTIFACTS / "test_feed.log").read_text()
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as h:  # the dashboard token reads, read-only
        assert (await h.get("/errors", headers={"Authorization": f"Bearer {DASHBOARD_TOKEN}"})).status_code == 200
        assert (await h.get("/errors", headers={"Authorization": "Bearer nope"})).status_code == 401


async def test_dashboard_in_headless_chromium_shows_a_new_group_within_a_second(
        stack: Stack, http: httpx.AsyncClient) -> None:
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 1600, "height": 900})
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        await page.goto(f"{stack.url}/dashboard#token={DASHBOARD_TOKEN}")
        # a selector, not wait_for_function: the page's CSP (no eval) is kept as in production
        await page.wait_for_selector("#conn.live", timeout=15_000)
        assert "token=" not in page.url  # the token left the address bar
        services = ["checkout", "payments", "search", "auth", "mailer"]
        levels = ["error", "warning", "critical", "error", "info"]
        for i in range(5):  # some traffic so the table and the chart have something to show
            for _ in range(2 + 3 * i):
                await http.post("/errors/log", json={"message": f"{services[i]}: upstream failed ({i})",
                                                     "service": services[i], "level": levels[i],
                                                     "fingerprint": f"dash-{services[i]}"})
            await asyncio.sleep(0.3)
        tag = uuid.uuid4().hex[:8]
        r = await http.post("/errors/log", json={"message": f"TypeError: cart is undefined ({tag})",
                                                 "service": "web", "level": "error", "fingerprint": tag})
        posted = time.monotonic()
        fp = r.json()["fingerprint"]
        await page.wait_for_selector(f'tr[data-fp="{fp}"]', timeout=3000)
        shown = time.monotonic() - posted
        print(f"\nnew group on the dashboard {shown * 1000:.0f} ms after its first event was accepted")
        assert shown < 1.0
        row = page.locator(f'tr[data-fp="{fp}"]')
        assert "fresh" in (await row.get_attribute("class") or "")
        assert await row.locator("td.count").inner_text() == "1"
        await asyncio.sleep(0.5)
        await page.screenshot(path=str(ARTIFACTS / "dashboard.png"))
        assert not [c for c in console if c.startswith("error")], console


async def test_dashboard_layout_from_phone_to_wide_screen(stack: Stack, http: httpx.AsyncClient) -> None:
    """At 390 px (a phone) and 1,400 px: no sideways scroll, the message column is visible and shows the
    whole message (wrapped, not cut). Screenshots: test-artifacts/dashboard-390.png, dashboard-1400.png."""

    tag = uuid.uuid4().hex[:8]
    long_message = (f"ValueError: invoice {tag} could not be reconciled with the ledger entry because the "
                    "currency of the payment provider's settlement report differs from the order's currency")
    for i in range(3):
        await http.post("/errors/log", json={"message": long_message if i == 0 else f"KeyError: 'sku' ({tag}-{i})",
                                             "service": "billing-reconciliation-worker", "level": "error",
                                             "fingerprint": f"layout-{tag}-{i}"})
    async with chromium() as browser:
        for width in (390, 1400):
            page = await browser.new_page(viewport={"width": width, "height": 844 if width < 500 else 900})
            await page.goto(f"{stack.url}/dashboard#token={DASHBOARD_TOKEN}")
            await page.wait_for_selector("#conn.live", timeout=15_000)
            cell = page.locator("td.msg .text", has_text=long_message[:40])
            await cell.wait_for(timeout=5000)
            overflow = await page.evaluate(
                "() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, f"{width}px: the page scrolls sideways by {overflow}px"
            box = await cell.bounding_box()
            assert box is not None and box["width"] > width * 0.4, (width, box)  # the widest column
            assert box["x"] >= 0 and box["x"] + box["width"] <= width
            assert await cell.inner_text() == long_message  # all of it, not an ellipsis
            clipped = await cell.evaluate("e => e.scrollWidth > e.clientWidth + 1")
            assert not clipped, f"{width}px: the message is cut"
            for stat in ("#stat-rate", "#stat-groups", "#stat-events", "#conn"):
                b = await page.locator(stat).bounding_box()
                assert b is not None and b["x"] >= 0 and b["x"] + b["width"] <= width, (width, stat, b)
            await page.screenshot(path=str(ARTIFACTS / f"dashboard-{width}.png"), full_page=True)
            await page.close()


async def test_dashboard_says_in_plain_words_when_the_token_is_wrong(stack: Stack) -> None:
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 390, "height": 844})
        await page.goto(f"{stack.url}/dashboard#token=not-the-right-token-000")
        error = page.locator("#login-error")
        await error.wait_for(state="visible", timeout=15_000)
        text = await error.inner_text()
        assert "not accepted" in text and "invalid_token" not in text and "auth {" not in text, text
        assert await page.locator("#empty").inner_text() != "No errors yet — waiting for events."  # not known
        await page.screenshot(path=str(ARTIFACTS / "dashboard-wrong-token.png"))


def sentry_event(tag: str) -> dict[str, Any]:
    """A Sentry-shaped event: an exception with frames, some in the app, some in a library."""
    frames = [
        {"filename": "gunicorn/workers/sync.py", "function": "handle_request", "lineno": 135, "in_app": False},
        {"filename": "app/views/checkout.py", "function": "submit_order", "lineno": 88, "in_app": True},
        {"filename": "app/services/cart.py", "function": "total_price", "lineno": 41, "in_app": True},
        {"filename": "decimal.py", "function": "__add__", "lineno": 1203, "in_app": False},
    ]
    return {"event_id": uuid.uuid4().hex, "platform": "python", "level": "error", "release": "shop@2.4.1",
            "environment": "production", "server_name": "web-3", "tags": {"region": "eu-west-1", "tag": tag},
            "exception": {"values": [{"type": "TypeError", "value": f"unsupported operand type(s) for +: "
                                      f"'Decimal' and 'NoneType' ({tag})", "stacktrace": {"frames": frames}}]}}


async def test_group_page_resolve_then_an_event_shows_regressed_within_a_second(stack: Stack) -> None:
    """Triage in the browser: open the dashboard, click a group, see its stack trace (in-app frames marked)
    and hourly chart, resolve it, send an event for it: the row says "regressed" within a second.
    Screenshots: test-artifacts/triage-table.png, triage-group.png, triage-regressed.png."""
    tag = uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
        ingest = {"X-Faultline-Key": stack.ingest_key}
        admin = {"Authorization": f"Bearer {stack.admin_token}"}
        for i, (svc, level, msg) in enumerate([("payments", "warning", "card declined by issuer"),
                                               ("search", "error", "ConnectionError: opensearch timed out"),
                                               ("mailer", "info", "SMTP 451 greylisted, will retry")]):
            for _ in range(i + 2):  # other rows for the table
                r = await http.post("/errors/log", headers=ingest, json={"message": msg, "service": svc,
                                                                          "level": level})
                assert r.status_code == 202
        for _ in range(3):
            r = await http.post(f"/api/1/store/?sentry_key={stack.ingest_key}", json=sentry_event(tag))
            assert r.status_code == 200, r.text
        fp = ""

        async def stored() -> bool:
            nonlocal fp
            items = (await http.get("/errors", headers=admin, params={"q": tag})).json()["items"]
            fp = items[0]["fingerprint"] if items and items[0]["count"] == 3 else ""
            return bool(fp)

        await wait_for(stored, 15, "the worker to store the Sentry group")

        async with chromium() as browser:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            console: list[str] = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            await page.goto(f"{stack.url}/dashboard#token={stack.admin_token}")
            await page.wait_for_selector("#conn.live", timeout=15_000)
            row = page.locator(f'tr[data-fp="{fp}"]')
            await row.wait_for(timeout=5000)
            await page.screenshot(path=str(ARTIFACTS / "triage-table.png"))

            # the group page, by clicking the row's message: stack trace with in-app frames, hourly chart
            await row.locator("a.text").click()
            await page.wait_for_url(f"**/dashboard/groups/{fp}")
            await page.locator(".frame.in-app").first.wait_for(timeout=5000)
            sample = page.locator(".sample").first  # the newest of the 3 samples
            assert await sample.locator(".frame").count() == 4 and await sample.locator(".frame.in-app").count() == 2
            frames = await page.locator(".frames").first.inner_text()
            assert frames.index("total_price") < frames.index("submit_order")  # most recent call first
            assert "app/services/cart.py:41" in frames
            assert "TypeError: unsupported operand" in await page.locator(".exception h3").first.inner_text()
            await page.locator("#hourly rect.bar").first.wait_for(timeout=5000)  # this hour's bar
            for cell, text in (("#g-count", "3"), ("#g-release", "shop@2.4.1"), ("#g-env", "production")):
                await page.locator(cell, has_text=text).wait_for(timeout=5000)
            assert "region: eu-west-1" in await page.locator(".tags").first.inner_text()
            await page.wait_for_selector("#conn.live", timeout=10_000)
            await page.screenshot(path=str(ARTIFACTS / "triage-group.png"), full_page=True)

            # live: one more event moves the count and the bar without a reload
            r = await http.post(f"/api/1/store/?sentry_key={stack.ingest_key}", json=sentry_event(tag))
            assert r.status_code == 200
            await page.locator("#g-count", has_text="4").wait_for(timeout=3000)

            # resolve from the page (admin token), back to the table: the row says resolved
            await page.click("#resolve")
            await page.locator("#g-state", has_text=re.compile(r"^\s*resolved\s*$")).wait_for(timeout=5000)
            assert (await http.get(f"/errors/{fp}", headers=admin)).json()["state"] == "resolved"
            await page.go_back()
            await page.wait_for_selector("#conn.live", timeout=15_000)
            await page.locator(f'tr[data-fp="{fp}"] .badge.resolved').wait_for(timeout=5000)

            # an event for the resolved group: the row shows "regressed" within a second
            await asyncio.sleep(0.3)  # the resolve's time is in the past for the event that follows
            r = await http.post(f"/api/1/store/?sentry_key={stack.ingest_key}", json=sentry_event(tag))
            assert r.status_code == 200
            sent = time.monotonic()
            await page.locator(f'tr[data-fp="{fp}"] .badge.regressed').wait_for(timeout=5000)
            shown = time.monotonic() - sent
            print(f"\nregressed on the dashboard {shown * 1000:.0f} ms after the event was accepted")
            assert shown < 1.0
            await asyncio.sleep(0.3)
            await page.screenshot(path=str(ARTIFACTS / "triage-regressed.png"))
            g = (await http.get(f"/errors/{fp}", headers=admin)).json()
            assert (g["state"], g["regressed"], g["count"]) == ("unresolved", True, 5)
            assert not [c for c in console if c.startswith("error")], console
