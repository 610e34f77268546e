"""api/routes/sentry.py answers, with a fake runtime and ingestor (no servers): what SDKs get back when the
queue is full, when the key is missing or wrong, and that the event reaches the ingestor normalised."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from fastapi import FastAPI

from api import errors
from api.ingest import QueueFull
from api.routes import sentry
from core.events import LogErrorIn
from core.settings import Settings

KEY = "k" * 32


class FakeRuntime:
    settings = Settings(admin_token="x" * 20, rate_limit_enabled=False)

    async def lookup_project(self, key: str) -> int | None:
        return 3 if key == KEY else None


@dataclass
class Outcome:  # api.ingest.Accepted as the route reads it (rate_limited_ms: the per-project quota's field)
    event_id: str
    rate_limited_ms: int = 0


class FakeIngestor:
    def __init__(self, full: bool = False, quota_ms: int = 0) -> None:
        self.full, self.quota_ms, self.seen = full, quota_ms, []

    async def ingest(self, project: int, items: list[LogErrorIn], edge_id: str | None = None) -> list[Outcome]:
        if self.full:
            raise QueueFull(10)
        self.seen.append((project, items))
        return [Outcome(i.event_id or "0" * 32, self.quota_ms) for i in items]


def app_with(ingestor: FakeIngestor) -> FastAPI:
    app = FastAPI()
    errors.install(app)
    app.include_router(sentry.router)
    app.state.runtime, app.state.ingestor = FakeRuntime(), ingestor
    return app


async def post(app: FastAPI, body: bytes, headers: dict[str, str], project: int = 3) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.post(f"/api/{project}/envelope/", content=body, headers=headers)


def envelope(event: dict[str, Any]) -> bytes:
    return b"\n".join([orjson.dumps({"event_id": event["event_id"]}), b'{"type":"event"}', orjson.dumps(event)])


AUTH = {"X-Sentry-Auth": f"Sentry sentry_key={KEY}, sentry_version=7"}
EVENT = {"event_id": "e" * 32, "message": "hello 42", "level": "info", "tags": {"service": "shop"}}


async def test_event_reaches_the_ingestor_normalised() -> None:
    ingestor = FakeIngestor()
    r = await post(app_with(ingestor), gzip.compress(envelope(EVENT)), {**AUTH, "Content-Encoding": "gzip"})
    assert (r.status_code, r.json()) == (200, {"id": "e" * 32})
    [(project, [item])] = ingestor.seen
    assert project == 3 and item.message == "hello 42" and item.level == "info" and item.service == "shop"
    assert item.event_id == "e" * 32 and item.fingerprint is not None and item.fingerprint.startswith("sentry:")


async def test_full_queue_is_a_429_sdks_back_off_from() -> None:
    r = await post(app_with(FakeIngestor(full=True)), envelope(EVENT), AUTH)
    assert r.status_code == 429 and r.headers["retry-after"] == "5"
    secs, categories, scope, *_ = r.headers["x-sentry-rate-limits"].split(":")
    assert (secs, scope) == ("5", "key") and "error" in categories.split(";")
    assert r.headers["access-control-allow-origin"] == "*"


async def test_wrong_key_is_refused_before_the_body_is_used() -> None:
    ingestor = FakeIngestor()
    r = await post(app_with(ingestor), b"not even an envelope", {"X-Sentry-Auth": "Sentry sentry_key=nope"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_key" and "nope" not in r.text
    r = await post(app_with(ingestor), envelope(EVENT), AUTH, project=4)
    assert r.status_code == 403 and r.json()["error"] == "project_mismatch"
    r = await post(app_with(ingestor), envelope(EVENT), {**AUTH, "Content-Encoding": "compress"})
    assert r.status_code == 415
    assert ingestor.seen == []


async def test_over_quota_is_a_429_with_whole_seconds_for_the_error_categories() -> None:
    r = await post(app_with(FakeIngestor(quota_ms=2300)), envelope({**EVENT, "message": "nul \x00 inside"}), AUTH)
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert r.headers["x-sentry-rate-limits"] == "3:error;default;security:project:usage_exceeded"
