"""The nginx edge against hostile clients: real nginx (deploy/nginx/nginx.conf.tmpl) in front of a real API node.

Everything runs on loopback and is bounded in connections and time. Attackers use 127.0.0.x addresses other
than 127.0.0.1 (the template exempts this host's own 127.0.0.1 from the per-address limits, for the
benchmarks), so every limit applies to them as it would to a remote client.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from core.keys import Keys
from faultline.nginx import NginxServer
from faultline.services import free_port
from faultline.stack import Stack
from tests.browser import chromium
from tests.e2e.blackhole import BlackHole
from tests.e2e.stack_checks import module_stack
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "nginx.conf.tmpl"
HEADER_TIMEOUT = 10.0  # client_header_timeout / client_body_timeout in the template
SLOW_CONNECTIONS = 300
ATTACK_SECONDS = 15.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # The app's own per-key limiter off (module_stack's default): what is measured here is the edge.
    with module_stack(tmp_path_factory.mktemp("edge"), "test_edge", nodes=1, workers=1, schedulers=0, db="sqlite",
                      env={"FAULTLINE_DRAIN_DELAY": "0"}) as (st, _lines):
        yield st


def nginx_port(st: Stack) -> int:
    assert st.nginx is not None
    return st.nginx.port


async def exchange(port: int, raw: bytes, source: str = "127.0.0.2", timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """Send raw bytes, read the answer until nginx closes (or the first full response); status, headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(raw)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), timeout)
        return status, headers, body
    finally:
        writer.close()


def assert_json_error(status: int, headers: dict, body: bytes, want: int) -> None:
    assert status == want, (status, body)
    assert headers["content-type"].startswith("application/json"), headers
    assert isinstance(json.loads(body)["error"], str)


# --- request smuggling and oversized requests ---------------------------------------------------------------

SMUGGLING = {
    "cl-then-te": b"POST /errors/log HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"0\r\n\r\n",
    "te-then-cl": b"POST /errors/log HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n"
                  b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: e\r\n\r\n",
    "two-lengths": b"POST /errors/log HTTP/1.1\r\nHost: e\r\nContent-Length: 2\r\nContent-Length: 30\r\n\r\n{}",
    "te-not-chunked": b"POST /errors/log HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te-obfuscated": b"POST /errors/log HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: xchunked\r\nContent-Length: 2\r\n"
                     b"\r\n{}",
    "garbage-request-line": b"\x16\x03\x01 hello\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
async def test_conflicting_framing_is_refused_with_400_json(stack: Stack, name: str) -> None:
    status, headers, body = await exchange(nginx_port(stack), SMUGGLING[name])
    assert_json_error(status, headers, body, 400)


HUGE = 1 << 20
OVERSIZED = {
    "one 1 MB header": (b"GET /health/live HTTP/1.1\r\nHost: e\r\nX-Big: " + b"a" * HUGE + b"\r\n\r\n", 431),
    "1 MB of small headers": (b"GET /health/live HTTP/1.1\r\nHost: e\r\n"
                              + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1000) for i in range(HUGE // 1000))
                              + b"\r\n", 431),
    "1 MB cookie": (b"GET /health/live HTTP/1.1\r\nHost: e\r\nCookie: c=" + b"c" * HUGE + b"\r\n\r\n", 431),
    "1 MB URI": (b"GET /health/live?" + b"q" * HUGE + b" HTTP/1.1\r\nHost: e\r\n\r\n", 414),
    "2 MB body": (b"POST /errors/batch HTTP/1.1\r\nHost: e\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 2097152\r\n\r\n", 413),
}


@pytest.mark.parametrize("name", sorted(OVERSIZED))
async def test_oversized_requests_get_a_4xx_json_answer(stack: Stack, name: str) -> None:
    raw, want = OVERSIZED[name]
    try:
        status, headers, body = await exchange(nginx_port(stack), raw)
    except ConnectionResetError:
        pytest.fail("nginx reset the connection instead of answering")
    assert_json_error(status, headers, body, want)


async def test_normal_requests_still_pass_and_edge_pages_are_not_reachable(stack: Stack) -> None:
    port = nginx_port(stack)
    event = json.dumps({"message": "edge ok", "service": "edge"}).encode()
    status, _, body = await exchange(port, b"POST /errors/log HTTP/1.1\r\nHost: e\r\nContent-Type: application/json\r\n"
                                     + f"X-Faultline-Key: {stack.ingest_key}\r\nContent-Length: {len(event)}\r\n"
                                       "Connection: close\r\n\r\n".encode() + event)
    assert status == 202, body
    chunked = b"POST /errors/log HTTP/1.1\r\nHost: e\r\nContent-Type: application/json\r\n" \
              + f"X-Faultline-Key: {stack.ingest_key}\r\nTransfer-Encoding: chunked\r\n\r\n".encode() \
              + b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event)
    assert (await exchange(port, chunked))[0] == 202  # chunked alone is fine
    status, headers, body = await exchange(port, b"GET /_edge/400.json HTTP/1.1\r\nHost: e\r\n\r\n")
    assert_json_error(status, headers, body, 404)


# --- slow clients ------------------------------------------------------------------------------------------

async def slow_header_client(port: int, source: str, started: float, closed: list[float]) -> None:
    """Sends a request header one byte every 2 s, forever; records when nginx drops the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    line = b"GET /health/live HTTP/1.1\r\nHost: e\r\nX-Slow: " + b"s" * 64
    try:
        for byte in line:
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1), 2.0) == b"":
                    break
            except TimeoutError:
                continue
            break  # nginx answered something: the header was never finished, so that is an error page
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        closed.append(time.monotonic() - started)
        writer.close()


async def trickled_body(port: int, marker: str) -> tuple[bytes, float]:
    """Sends a request header and the start of its body, then nothing; what nginx answers, and when."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.3", 0))
    writer.write(f"POST /errors/log?m={marker} HTTP/1.1\r\nHost: e\r\nContent-Type: application/json\r\n"
                 "Content-Length: 1000\r\n\r\n".encode() + b'{"message": "')
    await writer.drain()
    t0 = time.monotonic()
    try:
        got = await asyncio.wait_for(reader.read(), HEADER_TIMEOUT + 5)
    except ConnectionResetError:
        got = b""
    writer.close()
    return got, time.monotonic() - t0


async def test_slowloris_and_trickled_bodies_do_not_keep_a_normal_client_out(stack: Stack) -> None:
    """300 connections trickle headers and one trickles its body until nginx cuts them (at most 15 s); a normal
    client keeps posting all that time."""
    port = nginx_port(stack)
    started = time.monotonic()
    closed: list[float] = []
    attackers = [asyncio.create_task(slow_header_client(port, f"127.0.0.{10 + i % 50}", started, closed))
                 for i in range(SLOW_CONNECTIONS)]
    marker = uuid.uuid4().hex
    trickler = asyncio.create_task(trickled_body(port, marker))
    latencies: list[float] = []
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
        await asyncio.sleep(1.0)  # every attacker is connected and trickling
        # the normal client posts for as long as the attack lasts: until nginx has cut every slow connection
        # (after its 10-s timeouts), at most ATTACK_SECONDS; the seconds after that would be a quiet edge (on a
        # slow machine it goes on until it has the 51 requests checked below, as it did in 15 s)
        while time.monotonic() - started < ATTACK_SECONDS and (
                len(closed) < SLOW_CONNECTIONS or not trickler.done() or len(latencies) <= 50):
            t0 = time.monotonic()
            r = await client.post("/errors/log", json={"message": "during slowloris", "service": "edge"},
                                  headers={"X-Faultline-Key": stack.ingest_key})
            latencies.append(time.monotonic() - t0)
            statuses.append(r.status_code)
            await asyncio.sleep(0.1)
    _, pending = await asyncio.wait(attackers, timeout=5)
    for task in pending:
        task.cancel()
    assert not pending, f"{len(pending)} slow connections still open after {ATTACK_SECONDS + 5} s"
    # the normal client got in all the time, quickly
    assert statuses and set(statuses) == {202}, statuses
    assert len(latencies) > 50
    # (bounds for a shared 2-core machine; unloaded, the median is ~5 ms)
    assert statistics.median(latencies) < 0.25 and max(latencies) < 3.0, (statistics.median(latencies),
                                                                          max(latencies))
    # nginx, not the client, ended every slow connection, after the header timeout and not much later
    assert len(closed) == SLOW_CONNECTIONS
    assert HEADER_TIMEOUT - 1 <= min(closed) and max(closed) <= HEADER_TIMEOUT + 4, (min(closed), max(closed))
    # the paused body was cut after client_body_timeout, at the edge: no node was ever asked
    got, waited = await trickler
    assert got == b"" or got.startswith(b"HTTP/1.1 408"), got[:200]
    assert HEADER_TIMEOUT - 1 <= waited <= HEADER_TIMEOUT + 4, waited
    assert stack.nginx is not None
    access_log = stack.nginx.prefix / "access.log"

    async def logged() -> bool:  # nginx flushes its buffered access log every second
        return marker in access_log.read_text()
    await wait_for(logged, 5, "the cut request in nginx's access log")
    line = next(ln for ln in access_log.read_text().splitlines() if marker in ln)
    assert " 408 " in line and "up=- " in line, line


# --- per-address limits -----------------------------------------------------------------------------------

class TightNginx(NginxServer):
    """The real template with its per-address rate scaled down, so a test can reach it in a few requests."""

    def render(self) -> Path:
        conf = super().render()
        text, n = re.subn(r"rate=\d+r/s", "rate=1r/s", conf.read_text())
        text, m = re.subn(r"burst=\d+", "burst=5", text)
        assert n == 1 and m == 1, "the template's limit_req_zone / limit_req lines changed"
        conf.write_text(text)
        return conf


@pytest.fixture(scope="module")
def tight(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxServer]:
    server = TightNginx(tmp_path_factory.mktemp("tight"), list(stack.node_ports.values()), port=free_port()).start()
    yield server
    server.stop()


async def test_rate_over_the_per_address_limit_is_429_json_and_this_host_is_exempt(
        stack: Stack, tight: NginxServer) -> None:
    def client(source: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=tight.url, timeout=10,
                                 transport=httpx.AsyncHTTPTransport(local_address=source))

    async with client("127.0.0.4") as noisy, client("127.0.0.5") as other, client("127.0.0.1") as local:
        codes = [(await noisy.get("/health/live")).status_code for _ in range(12)]
        refused = await noisy.get("/health/live")
        assert codes[:6] == [200] * 6 and 429 in codes and refused.status_code == 429, codes
        assert refused.headers["content-type"].startswith("application/json") and refused.json()["error"]
        assert refused.headers["retry-after"] == "1"
        # another address has its own budget; this host's 127.0.0.1 is never limited
        assert (await other.get("/health/live")).status_code == 200
        assert {(await local.get("/health/live")).status_code for _ in range(20)} == {200}


async def test_concurrent_connections_over_the_per_address_limit_are_429(stack: Stack) -> None:
    """limit_conn 256: requests whose body is still being read hold a slot; the 257th is refused at once."""
    port = nginx_port(stack)
    held = []
    head = b"POST /errors/log HTTP/1.1\r\nHost: e\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    try:
        for _ in range(256):
            _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.6", 0))
            writer.write(head)
            held.append(writer)
        await asyncio.gather(*(w.drain() for w in held))
        await asyncio.sleep(0.5)  # nginx has read every header
        status, headers, body = await exchange(port, head, source="127.0.0.6")
        assert_json_error(status, headers, body, 429)
        # another address is not affected
        async with httpx.AsyncClient(base_url=stack.url, timeout=5,
                                     transport=httpx.AsyncHTTPTransport(local_address="127.0.0.7")) as c:
            assert (await c.get("/health/live")).status_code == 200
    finally:
        for w in held:
            w.close()


# --- the browser pages through the edge, offline --------------------------------------------------------

async def test_docs_and_dashboard_render_offline_under_their_csp(stack: Stack) -> None:
    """Headless Chromium with every request to another origin refused: /docs still renders the API, the
    dashboard goes live, no CSP violation is reported, and the admin token is kept in this tab only."""
    from playwright.async_api import Route

    foreign: list[str] = []

    async def only_this_origin(route: Route) -> None:
        if route.request.url.startswith(stack.url + "/"):
            await route.continue_()
        else:
            foreign.append(route.request.url)
            await route.abort()

    async with chromium() as browser:
        page = await browser.new_page()
        await page.route("**/*", only_this_origin)
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        await page.goto(f"{stack.url}/docs")
        await page.wait_for_selector(".opblock", timeout=15_000)  # an operation of /openapi.json is shown
        assert await page.locator(".opblock").count() >= 3
        await page.goto(f"{stack.url}/dashboard#token={stack.admin_token}")
        await page.wait_for_selector("#conn.live", timeout=15_000)
        assert "token=" not in page.url
        stored = await page.evaluate("[sessionStorage.getItem('faultline.token'), localStorage.length]")
        assert stored == [stack.admin_token, 0]
        other_tab = await browser.new_page()  # a new tab (or a restarted browser) does not have it
        await other_tab.goto(f"{stack.url}/dashboard")
        assert await other_tab.evaluate("sessionStorage.getItem('faultline.token')") is None
    assert not foreign, foreign
    assert not [c for c in console if c.startswith("error") or "Content Security Policy" in c], console


# --- retries of POSTs by the edge count once --------------------------------------------------------------
# nginx retries an ingest POST on the next node after a timeout (proxy_next_upstream ... non_idempotent; the
# same setting ingress-nginx gets from deploy/k8s/components/edge-retries). The hard case, replayed for real:
# the first node takes the request and counts it, but its answer never comes back before proxy_read_timeout.
# A black hole (tests/e2e/blackhole.py) forwards to the real node, then sits on nginx's connection; the real
# node is nginx's `backup`, so each request reaches it twice. With a client event id and without one (the
# app derives it from X-Edge-Request-ID, which nginx sets from its own $request_id, never the client's).
RETRY_READ_TIMEOUT = 2


@pytest.fixture(scope="module")
def retry_edge(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NginxServer, BlackHole]]:
    node = stack.node_ports[stack.nodes[0].name]
    hole = BlackHole(node, hold=RETRY_READ_TIMEOUT * 5).start()
    nginx = NginxServer(tmp_path_factory.mktemp("edge-retry"), [hole.port], backups=[node],
                        read_timeout=f"{RETRY_READ_TIMEOUT}s").start()
    try:
        yield nginx, hole
    finally:
        nginx.stop()
        hole.close()


@pytest.mark.parametrize(("client_event_id", "source"),
                         [(True, "127.0.0.1"), (False, "127.0.0.1"), (False, "127.0.0.2")],
                         ids=["client-event-id", "no-event-id", "no-event-id-other-client-address"])
def test_a_post_replayed_after_an_upstream_timeout_counts_once(
        stack: Stack, retry_edge: tuple[NginxServer, BlackHole], client_event_id: bool, source: str) -> None:
    """From another address than the proxy's own too: the node must trust nginx's X-Edge-Request-ID because
    nginx is its socket peer, whoever the client behind it is (uvicorn's own proxy-headers rewrite of the
    peer to X-Forwarded-For's client made the node distrust it: such a replay counted twice)."""
    nginx, hole = retry_edge
    keys = Keys.from_settings(stack.settings())
    event: dict[str, object] = {"message": "replayed by the edge", "fingerprint": f"edge-retry-{uuid.uuid4().hex}"}
    if client_event_id:
        event["event_id"] = uuid.uuid4().hex
    already = len(hole.seen)
    # a client may not pick the edge id: it would decide which of its events count
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=RETRY_READ_TIMEOUT * 5) as c:
        answer = c.post(f"{nginx.url}/errors/log", json=event,
                        headers={"X-Faultline-Key": stack.ingest_key, "X-Edge-Request-ID": "chosenbytheclient"})
    assert answer.status_code == 202, answer.text
    [(first_headers, first_body)] = hole.seen[already:]  # the first delivery: counted, its answer lost
    assert first_body.get("status") == "queued" and not first_body.get("duplicate"), first_body
    edge_id = first_headers["x-edge-request-id"]
    assert edge_id != "chosenbytheclient" and edge_id.isalnum()
    replay = answer.json()  # what the real node answered to nginx's re-send of the same request
    assert replay["duplicate"] is True, replay  # accepted, not counted again
    assert replay["event_id"] == first_body["event_id"] == event.get("event_id", first_body["event_id"])
    # the group's count, in Redis until a scheduler syncs it (none runs here): one for two deliveries
    store = redis.Redis.from_url(stack.settings().redis_url)
    try:
        assert int(store.hget(keys.pending_counts, replay["fingerprint"]) or 0) == 1  # type: ignore[arg-type]
    finally:
        store.close()
