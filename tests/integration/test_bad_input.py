"""Every kind of bad input gets a clear 4xx JSON body; a dead Redis a fast 503; nothing accepted is lost."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from core.access import key_hash
from core.counts import split_deltas
from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings
from tests.integration.conftest import INGEST_KEY, api_client, prepare

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def settings(make_settings: Any) -> Settings:
    return make_settings(max_body_bytes=4096, batch_max_events=10)


CASES: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
    ("malformed json", "/errors/log", b'{"message": "x"', JSON, 400, "invalid_json"),
    ("not an object", "/errors/log", b'["message"]', JSON, 422, "invalid_request"),
    ("wrong content type", "/errors/log", b'{"message": "x"}', {"Content-Type": "text/plain"}, 415,
     "unsupported_media_type"),
    ("no content type", "/errors/log", b'{"message": "x"}', {}, 415, "unsupported_media_type"),
    ("missing message", "/errors/log", b'{"service": "web"}', JSON, 422, "invalid_request"),
    ("oversized field", "/errors/log", b'{"message": "x", "service": "' + b"s" * 200 + b'"}', JSON, 422,
     "invalid_request"),
    ("body over limit", "/errors/log", b'{"message": "' + b"x" * 5000 + b'"}', JSON, 413, "body_too_large"),
    ("invalid utf-8", "/errors/log", b'{"message": "caf\xe9"}', JSON, 400, "invalid_utf8"),
    ("unknown level", "/errors/log", b'{"message": "x", "level": "panic"}', JSON, 422, "invalid_request"),
    ("bad event id", "/errors/log", b'{"message": "x", "event_id": "123"}', JSON, 422, "invalid_request"),
    ("context not object", "/errors/log", b'{"message": "x", "context": [1]}', JSON, 422, "invalid_request"),
    ("empty body", "/errors/log", b"", JSON, 400, "empty_body"),
    ("batch over limit", "/errors/batch", b'{"events": [' + b",".join([b'{"message": "m"}'] * 11) + b"]}",
     JSON, 413, "batch_too_large"),
    ("batch empty", "/errors/batch", b'{"events": []}', JSON, 422, "invalid_request"),
    ("batch not a list", "/errors/batch", b'{"events": {"message": "m"}}', JSON, 422, "invalid_request"),
]


@pytest.mark.parametrize(("name", "path", "body", "headers", "status", "code"), CASES, ids=[c[0] for c in CASES])
async def test_bad_input_is_a_clear_4xx(settings: Settings, name: str, path: str, body: bytes,
                                        headers: dict[str, str], status: int, code: str) -> None:
    await prepare(settings)
    async with api_client(settings) as c:
        ok = await c.post("/errors/log", json={"message": "accepted before"})
        assert ok.status_code == 202
        r = await c.post(path, content=body, headers=headers)
        assert r.status_code == status, r.text
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["error"] == code and r.json()["message"]
        # nothing already accepted is lost, and the bad request queued nothing
        redis = make_redis(settings, timeout=5)
        counts = await redis.hgetall(Keys.from_settings(settings).pending_counts)
        await redis.aclose()
        assert sum(split_deltas(counts)[0].values()) == 1


async def test_validation_errors_name_the_field(settings: Settings) -> None:
    await prepare(settings)
    async with api_client(settings) as c:
        r = await c.post("/errors/log", json={"message": "x", "level": "panic"})
        assert r.json()["details"][0]["field"] == "level"


async def test_missing_and_unknown_ingest_key(settings: Settings) -> None:
    await prepare(settings)
    async with api_client(settings) as c:
        r = await c.post("/errors/log", json={"message": "x"}, headers={"X-Faultline-Key": ""})
        assert r.status_code == 401 and r.json()["error"] == "missing_key"
        r = await c.post("/errors/log", json={"message": "x"}, headers={"X-Faultline-Key": "nope"})
        assert r.status_code == 401 and r.json()["error"] == "invalid_key"


async def test_chunked_body_over_limit_is_refused_while_streaming(settings: Settings) -> None:
    await prepare(settings)

    async def chunks() -> Any:
        for _ in range(10):
            yield b" " * 1000

    async with api_client(settings) as c:
        r = await c.post("/errors/log", content=chunks(), headers=JSON)
        assert r.status_code == 413


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A TCP server that accepts connections and never answers (a hung Redis)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(100)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    for c in conns:
        c.close()
    srv.close()


@pytest.mark.parametrize("kind", ["refused", "hung"])
async def test_redis_unreachable_is_a_fast_503(make_settings: Any, blackhole: int, kind: str) -> None:
    ok_settings = make_settings()
    await prepare(ok_settings)
    if kind == "refused":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again: nothing listens there
    else:
        port = blackhole
    settings = make_settings(redis_url=f"redis://127.0.0.1:{port}/0")
    async with api_client(settings) as c:
        c._transport.app.state.runtime.projects = {key_hash("test-ingest-key-0123456789"): 1}  # type: ignore[attr-defined]
        start = time.monotonic()
        results = await asyncio.gather(*[c.post("/errors/log", json={"message": "x"}) for _ in range(20)])
        elapsed = time.monotonic() - start
    assert {r.status_code for r in results} == {503}
    assert results[0].json()["error"] == "unavailable" and results[0].headers["retry-after"] == "1"
    assert elapsed < 1.0 + 0.5  # each request gives up within the 0.5 s Redis timeout


async def test_client_disconnect_mid_body_is_not_a_500(settings: Settings) -> None:
    await prepare(settings)
    async with api_client(settings) as c:
        app = c._transport.app  # type: ignore[attr-defined]
        messages = [{"type": "http.request", "body": b'{"message": "x', "more_body": True},
                    {"type": "http.disconnect"}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/errors/log", "raw_path": b"/errors/log", "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 5000), "server": ("node", 80),
                 "headers": [(b"content-type", b"application/json"), (b"x-faultline-key", INGEST_KEY.encode())]}
        await app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        assert start["status"] == 400
