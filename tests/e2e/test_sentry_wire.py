"""Sentry ingest through nginx on the real stack: every Content-Encoding with every auth form,
envelopes with several and unknown item types, the store endpoint, CORS; then bad input (truncated envelope,
wrong length, an item over the limit, a 1 GB gzip bomb, a brotli bomb, invalid JSON in one item, wrong keys):
each the right 4xx, API node memory flat, and nothing accepted before lost."""

from __future__ import annotations

import gzip
import re
import struct
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import brotli
import httpx
import orjson
import pytest
import zstandard

from core.fingerprint import client_fingerprint
from core.sentry.grouping import group_key
from faultline.stack import Stack
from tests.conftest import STACK_DRAIN_DELAY
from tests.e2e.sentry_support import add_project, dsn, get_json, nodes_rss, project_of
from tests.e2e.stack_checks import module_stack

pytestmark = pytest.mark.e2e
ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress, "deflate": zlib.compress, "deflate-raw": lambda b: zlib.compress(b)[2:-4],
    "br": brotli.compress, "zstd": zstandard.ZstdCompressor().compress, "identity": lambda b: b}
AUTH_FORMS = ("x-sentry-auth", "authorization", "query", "dsn")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with module_stack(tmp_path_factory.mktemp("sentry-wire"), "e2e_sentry_wire", nodes=2, workers=1,
                      env={"FAULTLINE_DRAIN_DELAY": STACK_DRAIN_DELAY}) as (st, _):  # nodes stop only at teardown
        yield st


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        yield client


def event(tag: str, **extra: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "platform": "python", "level": "error", "fingerprint": [tag],
            "exception": {"values": [{"type": "WireError", "value": f"probe {tag}",
                                      "stacktrace": {"frames": [{"function": "f", "module": "m", "in_app": True}]}}]},
            **extra}


def envelope(items: list[tuple[dict[str, Any], bytes]], header: dict[str, Any] | None = None) -> bytes:
    lines = [orjson.dumps(header or {})]
    for h, payload in items:
        lines += [orjson.dumps(h), payload]
    return b"\n".join(lines) + b"\n"


def event_envelope(ev: dict[str, Any], header: dict[str, Any] | None = None) -> bytes:
    payload = orjson.dumps(ev)
    return envelope([({"type": "event", "length": len(payload)}, payload)],
                    {"event_id": ev["event_id"], **(header or {})})


def post(http: httpx.Client, stack: Stack, body: bytes, encoding: str = "identity", auth: str = "x-sentry-auth",
         key: str | None = None, project: int | None = None, route: str = "envelope") -> httpx.Response:
    key = key or stack.ingest_key
    project = project or project_of(stack, stack.ingest_key)
    headers = {"Content-Type": "application/x-sentry-envelope"}
    params = {}
    if encoding != "identity":
        headers["Content-Encoding"] = encoding.removesuffix("-raw")
    if auth == "x-sentry-auth":
        headers["X-Sentry-Auth"] = f"Sentry sentry_key={key}, sentry_version=7, sentry_client=wire/1.0"
    elif auth == "authorization":
        headers["Authorization"] = f"Sentry sentry_key={key}, sentry_version=7"
    elif auth == "query":
        params = {"sentry_key": key, "sentry_version": "7"}
    return http.post(f"/api/{project}/{route}/", content=body, headers=headers, params=params)


def group_count(stack: Stack, tag: str) -> int | None:
    fp = client_fingerprint(project_of(stack, stack.ingest_key), group_key({"fingerprint": [tag]}, [], None))
    try:
        return int(get_json(stack, f"/errors/{fp}")["count"])
    except Exception:  # 404 until the worker wrote the group
        return None


def wait_count(stack: Stack, tag: str, expected: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and group_count(stack, tag) != expected:
        time.sleep(0.2)
    assert group_count(stack, tag) == expected


def item_metrics(stack: Stack) -> Counter[str]:
    out: Counter[str] = Counter()
    for port in stack.node_ports.values():
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        for kind, value in re.findall(r'^faultline_sentry_items_total\{type="([^"]+)"\} (\S+)$', text, re.M):
            out[kind] += int(float(value))
    return out


def test_every_encoding_with_every_auth_form_counts_each_event_once(stack: Stack, http: httpx.Client) -> None:
    tag = f"wire-{uuid.uuid4().hex[:8]}"
    first = b""
    for encoding, encode in ENCODERS.items():
        for auth in AUTH_FORMS:
            ev = event(tag)
            header = {"dsn": dsn(stack)} if auth == "dsn" else {}
            body = encode(event_envelope(ev, header))
            first = first or body
            r = post(http, stack, body, encoding, "none" if auth == "dsn" else auth)
            assert (r.status_code, r.json()) == (200, {"id": ev["event_id"]}), (encoding, auth, r.text)
            assert r.headers["access-control-allow-origin"] == "*"
    assert post(http, stack, first, "gzip").status_code == 200  # the same event again: accepted, not counted
    wait_count(stack, tag, len(ENCODERS) * len(AUTH_FORMS))


def test_several_item_types_unknown_ones_skipped_and_store(stack: Stack, http: httpx.Client) -> None:
    tag = f"items-{uuid.uuid4().hex[:8]}"
    ev = event(tag)
    payload = orjson.dumps(ev)
    binary = b"PK\x03\x04\nline\n\x00\xff" * 50  # newlines inside: only its `length` delimits it
    items = [({"type": "event", "length": len(payload)}, payload),
             ({"type": "transaction"}, orjson.dumps({"type": "transaction", "spans": []})),
             ({"type": "session"}, b'{"sid":"7c5b2f5a","status":"ok"}'),
             ({"type": "sessions"}, b'{"aggregates":[]}'),
             ({"type": "client_report"}, b'{"discarded_events":[]}'),
             ({"type": "attachment", "length": len(binary), "filename": "a.zip"}, binary),
             ({"type": "check_in"}, b'{"check_in_id":"a","status":"ok"}'),
             ({"type": "hologram", "length": 3}, b"???")]
    before = item_metrics(stack)
    r = post(http, stack, gzip.compress(envelope(items, {"event_id": ev["event_id"]})), "gzip")
    assert (r.status_code, r.json()) == (200, {"id": ev["event_id"]}), r.text
    # Only ignored types, no event: still 200 with the header's id, as the SDKs expect.
    r = post(http, stack, envelope([({"type": "session"}, b"{}")], {"event_id": "ab" * 16}))
    assert (r.status_code, r.json()) == (200, {"id": "ab" * 16})
    store_ev = event(tag)
    r = post(http, stack, gzip.compress(orjson.dumps(store_ev)), "gzip", route="store")
    assert (r.status_code, r.json()) == (200, {"id": store_ev["event_id"]})
    delta = item_metrics(stack) - before
    assert delta == Counter({"event": 2, "transaction": 1, "session": 2, "sessions": 1, "client_report": 1,
                             "attachment": 1, "check_in": 1, "unknown": 1}), delta
    wait_count(stack, tag, 2)


def test_auth_failures_and_cors(stack: Stack, http: httpx.Client) -> None:
    other_project, other_key = add_project(stack, "wire-other")
    body = event_envelope(event("auth"))
    cases = {
        "no key": post(http, stack, body, auth="none"),
        "wrong key": post(http, stack, body, key="not-a-real-key-123"),
        "other project's key": post(http, stack, body, key=other_key),
        "conflicting keys": http.post(f"/api/{project_of(stack, stack.ingest_key)}/envelope/", content=body,
                                      params={"sentry_key": other_key},
                                      headers={"X-Sentry-Auth": f"Sentry sentry_key={stack.ingest_key}"}),
        "dsn of another key": post(http, stack, event_envelope(event("auth"), {"dsn": dsn(stack, other_key)})),
        "unknown project": post(http, stack, body, project=other_project + 1000),
    }
    statuses = {name: r.status_code for name, r in cases.items()}
    assert statuses == {"no key": 401, "wrong key": 401, "other project's key": 403, "conflicting keys": 401,
                        "dsn of another key": 403, "unknown project": 403}, statuses
    for r in cases.values():
        assert r.json()["error"] and stack.ingest_key not in r.text and other_key not in r.text
        assert r.headers["access-control-allow-origin"] == "*"
    pre = http.options(f"/api/{other_project}/envelope/", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-sentry-auth"})
    assert pre.status_code == 200 and "x-sentry-auth" in pre.headers["access-control-allow-headers"].lower()
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "access-control-allow-origin" not in http.get("/health/live").headers  # these routes only


def gzip_bomb(gib: int = 1) -> bytes:
    """1 GiB of zeros as ~1 MB of valid gzip, built without holding 1 GiB: after a full flush every 1 MiB
    of zeros compresses to the same bytes, so one such block is repeated; the trailer gets the real CRC."""
    chunk = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    assert block == c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(1024 * gib):
        crc = zlib.crc32(chunk, crc)
    return head + block * (1024 * gib - 1) + c.flush()[:-8] + struct.pack("<II", crc, (1024 * gib << 20) & 0xFFFFFFFF)


def brotli_bomb() -> bytes:
    comp = brotli.Compressor(quality=1)
    chunk = bytes(1 << 20)
    return b"".join(comp.process(chunk) for _ in range(1024)) + comp.finish()


def test_bad_input_is_refused_memory_stays_flat_and_nothing_is_lost(stack: Stack, http: httpx.Client) -> None:
    tag = f"kept-{uuid.uuid4().hex[:8]}"
    for _ in range(5):
        assert post(http, stack, gzip.compress(event_envelope(event(tag))), "gzip").status_code == 200
    wait_count(stack, tag, 5)
    gz, br = gzip_bomb(), brotli_bomb()
    assert len(gz) < 2 << 20 and len(br) < 1 << 20
    good = orjson.dumps(event(tag))
    big = orjson.dumps(event(tag, extra={"blob": "x" * (1536 << 10)}))  # 1.5 MB: over the 1 MB item limit
    cases: dict[str, tuple[bytes, str, int]] = {
        "truncated": (event_envelope(event(tag))[:-40], "identity", 400),
        "length past the end": (envelope([({"type": "event", "length": len(good) + 50}, good)]), "identity", 400),
        "length too short": (envelope([({"type": "event", "length": len(good) - 5}, good)]), "identity", 400),
        "item over the limit": (gzip.compress(envelope([({"type": "event"}, big)])), "gzip", 413),
        "gzip bomb": (gz, "gzip", 413),
        "brotli bomb": (br, "br", 413),
        "invalid JSON in one item": (envelope([({"type": "event"}, good), ({"type": "event"}, b'{"broken":')]),
                                     "identity", 400),
        "corrupt gzip": (b"\x1f\x8b\x08\x00garbage" * 10, "gzip", 400),
    }
    rss_before = nodes_rss(stack)
    for _ in range(3):  # repeated: memory must not grow with the number of bombs either
        for name, (body, encoding, status) in cases.items():
            r = post(http, stack, body, encoding)
            assert r.status_code == status, (name, r.status_code, r.text)
            assert r.json()["error"], name
    growth = nodes_rss(stack) - rss_before
    print(f"API nodes RSS before {rss_before >> 20} MB, growth after 6 bombs of 1 GiB: {growth >> 20} MB")
    assert growth < 100 << 20, f"RSS grew by {growth >> 20} MB"
    assert post(http, stack, event_envelope(event(tag)), key="wrong-key-0000").status_code == 401
    # Nothing accepted before was lost, none of the refused envelopes' events counted, and ingest still works.
    assert post(http, stack, event_envelope(event(tag))).status_code == 200
    wait_count(stack, tag, 6)
