"""Rate limiting through the real edge: nginx -> 3 API nodes (gunicorn + uvicorn) -> one redis-server.

Every node runs with a different wall clock (libfaketime: -37 s, +0 s, +53 s), so every test here also
shows that the nodes agree: the windows live on Redis TIME only. The Redis log of the `long` tier keeps
every admitted request of the last hour with its Redis timestamp, which lets the tests check the sliding
window exactly, after the fact, instead of trusting the client's clock.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import time
from collections.abc import Iterator

import httpx
import libfaketime
import pytest
from redis.asyncio import Redis

from core.keys import Keys
from core.redis import make_redis
from faultline.procs import Child, FileSink
from faultline.stack import Stack, StackConfig
from tests.conftest import ARTIFACTS, STACK_DRAIN_DELAY

pytestmark = pytest.mark.e2e

SKEWS = (-37, 0, 53)  # seconds, one per API node
SHORT_LIMIT, SHORT_WINDOW = 20, 2.0
BURST_LIMIT = 50
ENV = {
    "FAULTLINE_RATE_LIMIT_ENABLED": "true",
    "FAULTLINE_DRAIN_DELAY": STACK_DRAIN_DELAY,
    "FAULTLINE_RATE_LIMITS": f"short:{SHORT_LIMIT}/{int(SHORT_WINDOW)}s,long:100000/h",
    # GET /errors gets a 30 s window of 50 so a 200-request burst surely lands inside one window
    "FAULTLINE_RATE_LIMIT_ROUTES": (f"POST /errors/log=on; POST /errors/batch=short:2/s; "
                                    f"GET /errors=short:{BURST_LIMIT}/30s"),
}


class SkewedStack(Stack):
    """API node i runs under libfaketime with SKEWS[i]: its time.time() (and Date header) is off."""

    def _child(self, name: str, args: list[str], **extra: str) -> Child:
        if name.startswith("api-"):
            ok, preload = libfaketime.get_reload_information()
            assert ok
            skew = SKEWS[(int(name.split("-")[1]) - 1) % len(SKEWS)]
            extra = {**extra, **preload, "FAKETIME": f"{skew:+d}s"}
        return super()._child(name, args, **extra)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, list[str]]]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    log = sink = FileSink(ARTIFACTS / "test_ratelimit_edge.log", keep=lines)

    stack = SkewedStack(StackConfig(base_dir=tmp_path_factory.mktemp("rl-edge"), nodes=3, port=0, workers=1,
                                    db="sqlite", env=ENV, sink=sink))
    try:
        stack.start()
        yield stack, lines
    finally:
        stack.stop()
        log.close()


def client_from(stack: Stack, source_ip: str, base: str | None = None) -> httpx.AsyncClient:
    """A client whose connections come from `source_ip` (any 127/8 address works on loopback)."""
    return httpx.AsyncClient(base_url=base or stack.url, timeout=30,
                             transport=httpx.AsyncHTTPTransport(local_address=source_ip),
                             limits=httpx.Limits(max_connections=250, max_keepalive_connections=250))


def redis_of(stack: Stack) -> Redis:
    return make_redis(stack.settings(), timeout=5)


def admitted_times(raw: list[tuple[bytes, float]]) -> list[float]:
    return sorted(score / 1e6 for _, score in raw)


def max_in_any_window(times: list[float], window: float) -> int:
    """The most entries any half-open window (t - window, t] holds (checked at every entry)."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def test_nodes_really_run_with_skewed_clocks(edge: tuple[Stack, list[str]]) -> None:
    stack, _ = edge
    skews: list[float] = []
    for port in stack.node_ports.values():
        async with httpx.AsyncClient() as c:
            r = await c.get(f"http://127.0.0.1:{port}/health/live")
        node_time = email.utils.parsedate_to_datetime(r.headers["date"]).timestamp()
        skews.append(node_time - time.time())
    # the Date header has whole seconds, cached for up to a second
    assert all(want - 2 < got < want + 1 for want, got in zip(SKEWS, sorted(skews), strict=True)), skews


async def test_burst_over_three_nodes_admits_exactly_the_limit(edge: tuple[Stack, list[str]]) -> None:
    stack, _ = edge
    async with client_from(stack, "127.0.0.11") as c:
        c.headers["Authorization"] = f"Bearer {stack.admin_token}"
        responses = await asyncio.gather(*[c.get("/errors") for _ in range(200)])
    codes = [r.status_code for r in responses]
    assert codes.count(200) == BURST_LIMIT and codes.count(429) == 200 - BURST_LIMIT, codes
    # the nodes behind nginx all took part (least_conn spreads a burst)
    async with redis_of(stack) as redis:
        key = Keys.from_settings(stack.settings()).ratelimit("short@GET/errors", "ip:127.0.0.11")
        assert await redis.zcard(key) == BURST_LIMIT


async def test_three_windows_never_hold_more_than_the_limit(edge: tuple[Stack, list[str]]) -> None:
    stack, _ = edge
    began = time.time()  # the log may hold this (key, IP)'s earlier requests (the stack's own start check)
    stop = time.monotonic() + 3 * SHORT_WINDOW + 0.5
    statuses: list[int] = []

    def more() -> bool:  # three windows' worth admitted; on a busy machine the senders may need longer
        now = time.monotonic()
        return now < stop or (now < stop + 15 and sum(st != 429 for st in statuses) < 3 * SHORT_LIMIT)

    async def sender(c: httpx.AsyncClient) -> None:
        while more():
            r = await c.post("/errors/log", json={"message": "window test", "service": "rl"},
                             headers={"X-Faultline-Key": stack.ingest_key})
            statuses.append(r.status_code)
            await asyncio.sleep(0.01)

    async with client_from(stack, "127.0.0.1") as c:
        await asyncio.gather(*[sender(c) for _ in range(6)])
    # (key, client IP): the key's window from this address only
    client = "k:" + hashlib.blake2b(stack.ingest_key.encode(), digest_size=10).hexdigest() + "|ip:127.0.0.1"
    async with redis_of(stack) as redis:
        raw = await redis.zrange(Keys.from_settings(stack.settings()).ratelimit("long", client), 0, -1,
                                 withscores=True)
    times = [t for t in admitted_times(raw) if t >= began - 0.01]
    # every admitted request is in the log, no 429 is (an admitted one may still meet a 503 from ingest
    # when the machine is busy: the limiter let it through, the event store did not answer in time)
    assert sum(st != 429 for st in statuses) == len(times)
    assert {202, 429} <= set(statuses) <= {202, 429, 503}
    assert max_in_any_window(times, SHORT_WINDOW) == SHORT_LIMIT
    span = times[-1] - times[0]
    assert span >= 2 * SHORT_WINDOW  # the run covered three consecutive windows...
    assert len(times) >= 3 * SHORT_LIMIT  # ...and filled each of them


async def test_retrying_client_is_admitted_when_its_oldest_request_leaves(
        edge: tuple[Stack, list[str]]) -> None:
    stack, _ = edge
    refusals: list[tuple[float, float, int, int]] = []  # (sent, received, retryAfterMs, Retry-After)
    admitted_after = None
    async with client_from(stack, "127.0.0.12") as c:
        for _ in range(SHORT_LIMIT):
            assert (await c.post("/errors/log", json={})).status_code == 401  # admitted: the route ran
        deadline = time.monotonic() + 3 * SHORT_WINDOW
        while time.monotonic() < deadline:  # retry every 20 ms while refused
            sent = time.time()
            r = await c.post("/errors/log", json={})
            received = time.time()
            if r.status_code != 429:
                admitted_after = sent
                break
            refusals.append((sent, received, r.json()["details"]["retry_after_ms"], int(r.headers["retry-after"])))
            await asyncio.sleep(0.02)
    assert admitted_after is not None and len(refusals) > 10
    async with redis_of(stack) as redis:
        raw = await redis.zrange(Keys.from_settings(stack.settings()).ratelimit("long", "ip:127.0.0.12"), 0, -1,
                                 withscores=True)
    times = admitted_times(raw)
    assert len(times) == SHORT_LIMIT + 1
    free_at = times[0] + SHORT_WINDOW  # the oldest request leaves the window (Redis time)
    # admitted again as soon as it could be: not before, and within one retry round trip after
    assert free_at <= times[-1] <= free_at + 0.5
    for sent, received, retry_ms, retry_s in refusals:
        # retryAfterMs is exact: refusal instant (between sent and received) + retryAfterMs == free_at
        assert sent - 0.005 <= free_at - retry_ms / 1000 <= received + 0.005
        # Retry-After is whole seconds, never too early, at most 1 s late
        assert retry_ms / 1000 <= retry_s < retry_ms / 1000 + 1


async def test_clients_are_independent_and_spoofed_headers_change_nothing(
        edge: tuple[Stack, list[str]]) -> None:
    stack, _ = edge
    keys = Keys.from_settings(stack.settings())
    victim_key = keys.ratelimit("short", "ip:127.0.0.13")
    async with client_from(stack, "127.0.0.13") as victim, client_from(stack, "127.0.0.14") as other:
        codes = [(await victim.post("/errors/log", json={})).status_code for _ in range(SHORT_LIMIT + 1)]
        assert codes == [401] * SHORT_LIMIT + [429]
        r = await other.post("/errors/log", json={})
        assert r.status_code == 401 and r.headers["x-ratelimit-remaining"] == str(SHORT_LIMIT - 1)
        # through nginx: the spoofed headers are replaced by the real peer address
        for _ in range(5):
            r = await other.post("/errors/log", json={}, headers={"X-Forwarded-For": "127.0.0.13",
                                                                  "X-Real-IP": "127.0.0.13"})
            assert r.status_code == 401
    # straight to a node from an untrusted peer (only 127.0.0.1 is a trusted proxy): headers ignored
    port = next(iter(stack.node_ports.values()))
    async with client_from(stack, "127.0.0.15", base=f"http://127.0.0.1:{port}") as attacker:
        codes = [(await attacker.post("/errors/log", json={}, headers={
            "X-Forwarded-For": f"garbage, 127.0.0.{100 + i}", "X-Real-IP": "127.0.0.13"})).status_code
            for i in range(SHORT_LIMIT + 1)]
    assert codes == [401] * SHORT_LIMIT + [429]  # rotating spoofed addresses did not mint new windows
    async with redis_of(stack) as redis:
        assert await redis.zcard(victim_key) == SHORT_LIMIT  # nobody added to (or reset) the victim's window
        assert await redis.zcard(keys.ratelimit("short", "ip:127.0.0.14")) == 6
        assert await redis.zcard(keys.ratelimit("short", "ip:127.0.0.15")) == SHORT_LIMIT
        assert await redis.exists(keys.ratelimit("short", "ip:127.0.0.100")) == 0


async def test_request_id_reaches_and_is_logged_by_every_node(edge: tuple[Stack, list[str]]) -> None:
    stack, lines = edge
    async with client_from(stack, "127.0.0.16") as c:
        rids = [f"e2e-rid-{i}" for i in range(12)]
        for batch in (rids[:6], rids[6:]):  # concurrently, so least_conn uses every node
            answers = await asyncio.gather(*[c.get("/errors", headers={"X-Request-ID": r}) for r in batch])
            for rid, r in zip(batch, answers, strict=True):
                assert r.status_code == 401 and r.headers.get_list("x-request-id") == [rid]
        r = await c.get("/errors", headers={"X-Request-ID": "bad id with spaces"})
        generated = r.headers["x-request-id"]
        assert len(generated) == 32 and generated != "bad id with spaces"
    await asyncio.sleep(1.5)  # nginx flushes its access log every second
    nodes_logging = {line.split("|")[0].strip() for line in lines for rid in rids if f"rid={rid} " in line}
    assert nodes_logging == set(stack.node_ports), nodes_logging
    assert any(f"rid={generated} " in line for line in lines)  # the node logged nginx's generated id
    assert stack.nginx is not None
    access = await asyncio.to_thread((stack.nginx.prefix / "access.log").read_text)
    assert all(f"rid={rid} " in access for rid in rids)


async def test_a_public_key_hammered_elsewhere_through_nginx_never_blocks_the_owner(
        edge: tuple[Stack, list[str]]) -> None:
    """The project's (public) key sent by another client to GET /nope and every other route, and
    to ingest until that client is refused: the owner's ingest, from its own address, keeps getting 202."""
    stack, _ = edge
    key = {"X-Faultline-Key": stack.ingest_key}
    paths = ["/nope", "/errors/log/x", "/api/1/nope", "/dashboard/static/nope.js", "/openapi.json"]
    async with client_from(stack, "127.0.0.21") as attacker, client_from(stack, "127.0.0.22") as owner:
        async def hammer() -> list[int]:
            got = await asyncio.gather(*[attacker.get(paths[i % len(paths)], headers=key) for i in range(300)])
            got += await asyncio.gather(*[attacker.post("/errors/log", json={"message": "spam"}, headers=key)
                                          for _ in range(3 * SHORT_LIMIT)])
            return [r.status_code for r in got]

        async def ingest() -> list[int]:
            codes = []
            for i in range(SHORT_LIMIT - 5):
                r = await owner.post("/errors/log", json={"message": f"owner {i}", "service": "web"}, headers=key)
                codes.append(r.status_code)
                await asyncio.sleep(0.05)
            return codes

        hammered, owned = await asyncio.gather(hammer(), ingest())
    assert owned == [202] * (SHORT_LIMIT - 5)
    assert all(code < 500 for code in hammered)
    assert 429 in hammered[300:]  # the hammering client is limited in its own (key, IP) window
