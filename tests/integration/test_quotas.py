"""Per-project event quotas and the new-group cap, against a real redis-server and a real DB (SQLite).

A batch costs one quota unit per event; events over the quota are answered 429 (or marked `rate_limited`
inside a batch that also accepted some), with an integer Retry-After, and counted as dropped per project
(Redis, GET /api/projects, the Prometheus metric). New groups over the cap are counted, exactly, into one
overflow group per project, down to the DB.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select

from core.db import repo
from core.db.engine import make_engine
from core.db.models import ErrorGroup
from core.events import Event
from core.keys import Keys
from core.ratelimit.quota import overflow_fingerprint
from core.redis import make_redis
from core.settings import Settings
from tests.integration.conftest import api_client, env_of, prepare
from tests.integration.test_ingest_api import drain_queue
from tests.waiting import wait_for

OTHER_KEY = "other-project-key-0123456789"


@pytest.fixture
async def setup(make_settings: Callable[..., Settings], request: pytest.FixtureRequest) -> tuple[Settings, int, int]:
    # the abuse tiers out of the way: this file is about the per-project event quota
    db = {"database_url": request.getfixturevalue("mariadb_url")} if "mariadb" in request.keywords else {}
    settings = make_settings(rate_limit_enabled=True, rate_limits="short:100000/s",
                             project_quota_per_second=0, project_quota_per_minute=0, **db)
    pid = await prepare(settings)
    engine = make_engine(settings)
    async with engine.begin() as conn:
        other, _ = await repo.ensure_project(conn, "other", OTHER_KEY)
    await engine.dispose()
    return settings, pid, other


def events(n: int, tag: str = "", **extra: Any) -> list[dict[str, Any]]:
    return [{"message": f"TypeError {tag}{i}", "service": "web", "fingerprint": f"fp-{tag}{i % 5}", **extra}
            for i in range(n)]


def dropped_metric(text: str) -> float:
    m = re.search(r'^faultline_events_dropped_total\{reason="rate_limited"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


async def project_entry(c: httpx.AsyncClient, pid: int) -> dict[str, Any]:
    r = await c.get("/api/projects")
    assert r.status_code == 200, r.text
    [entry] = [p for p in r.json()["items"] if p["id"] == pid]
    return entry


async def live_total(settings: Settings) -> int:
    async with make_redis(settings) as redis:
        return sum(int(v) for v in (await redis.hgetall(Keys.from_settings(settings).live_counts)).values())


async def test_a_batch_counts_per_event_and_over_quota_events_are_429_and_counted_as_dropped(
        setup: tuple[Settings, int, int]) -> None:
    settings, pid, other = setup
    async with api_client(settings) as c:
        before = dropped_metric((await c.get("/metrics")).text)
        r = await c.put(f"/api/projects/{pid}/quota", json={"per_minute": 150})
        assert r.status_code == 200, r.text
        assert r.json()["quota"]["per_minute"] == 150 and r.json()["quota"]["overrides"]["per_minute"] == 150
        # The quota refills at 2.5 events/s while the test runs: the checks allow for the time that passed
        # (a loaded machine), and the totals must match what the answers said, exactly.
        accepted = dropped = 0
        started = time.monotonic()
        r = await c.post("/errors/batch", json={"events": events(100, "a")})
        assert r.status_code == 202 and r.json()["accepted"] == 100 and r.json()["rate_limited"] == 0
        # about 50 fit, the rest do not: per event, in order; the answer is still 202 and says when to retry
        r = await c.post("/errors/batch", json={"events": events(100, "b")})
        refill = math.ceil((time.monotonic() - started) * 150 / 60)
        body = r.json()
        assert r.status_code == 202 and 50 <= body["accepted"] <= 50 + refill, (body["accepted"], refill)
        assert body["accepted"] + body["rate_limited"] == 100
        statuses = [e["status"] for e in body["results"]]
        assert statuses == ["queued"] * body["accepted"] + ["rate_limited"] * body["rate_limited"]
        assert r.headers["retry-after"].isdigit() and 1 <= int(r.headers["retry-after"]) <= 60
        accepted, dropped = 100 + body["accepted"], body["rate_limited"]
        # nothing fits: the whole batch is 429, JSON error body, integer Retry-After (a refill of a few
        # events while the machine is slow can let a part in: then the next batch is the refused one)
        for _ in range(5):
            r = await c.post("/errors/batch", json={"events": events(10, "c")})
            dropped += r.json()["rate_limited"]
            if r.status_code == 429:
                break
            accepted += r.json()["accepted"]
        assert r.status_code == 429, r.text
        assert r.json()["error"] == "rate_limited" and r.json()["message"] and r.json()["rate_limited"] == 10
        retry = r.headers["retry-after"]
        assert retry.isdigit() and 1 <= int(retry) <= 60
        one = {"message": "ValueError: late", "event_id": secrets.token_hex(16)}
        for _ in range(5):
            r = await c.post("/errors/log", json={**one, "event_id": secrets.token_hex(16)})
            if r.status_code != 429:
                accepted += 1
                continue
            dropped += 1
            break
        assert r.status_code == 429 and set(r.json()) >= {"error", "message"}, r.text
        assert r.headers["retry-after"].isdigit()
        wait = int(r.headers["retry-after"])
        one["event_id"] = r.json()["event_id"]
        # another project has its own quota (default: no limit here)
        r = await c.post("/errors/batch", json={"events": events(200, "o")}, headers={"X-Faultline-Key": OTHER_KEY})
        assert r.status_code == 202 and r.json()["accepted"] == 200
        assert await live_total(settings) == accepted + 200  # exactly what was answered accepted
        entry = await project_entry(c, pid)
        assert entry["dropped"] == {"total": dropped, "rate_limited": dropped}
        assert (await project_entry(c, other))["dropped"] == {"total": 0, "rate_limited": 0}
        assert dropped_metric((await c.get("/metrics")).text) - before == dropped
        # a refused event was not remembered as seen: after Retry-After the same event id is counted
        await asyncio.sleep(wait)
        r = await c.post("/errors/log", json=one)
        assert r.status_code == 202 and "duplicate" not in r.json(), r.text
        accepted += 1
        assert await live_total(settings) == accepted + 200
    # every accepted event queued once, none of the dropped
    assert await drain_queue(settings) == accepted + 200


async def test_per_second_quota_and_duplicates_cost_nothing(setup: tuple[Settings, int, int]) -> None:
    settings, pid, _ = setup
    async with api_client(settings) as c:
        assert (await c.put(f"/api/projects/{pid}/quota", json={"per_second": 5})).status_code == 200
        batch = events(5, "d", level="warning")
        for e in batch:
            e["event_id"] = secrets.token_hex(16)
        assert (await c.post("/errors/batch", json={"events": batch})).json()["accepted"] == 5
        r = await c.post("/errors/batch", json={"events": batch})  # all duplicates: accepted, not counted
        assert r.status_code == 202 and r.json()["duplicates"] == 5 and r.json()["rate_limited"] == 0
        for _ in range(10):  # (the quota refills one event per 200 ms: a slow machine may see one go in)
            r = await c.post("/errors/log", json={"message": "one more"})
            if r.status_code == 429:
                break
        assert r.status_code == 429 and r.headers["retry-after"] == "1"  # one event fits in 200 ms
        # back to the default (no limit in this test's settings)
        r = await c.put(f"/api/projects/{pid}/quota", json={})
        assert r.json()["quota"]["per_second"] == 0 and r.json()["quota"]["overrides"]["per_second"] is None
        assert (await c.post("/errors/batch", json={"events": events(50, "e")})).json()["accepted"] == 50


@pytest.mark.parametrize("db", [pytest.param("sqlite"), pytest.param("mariadb", marks=pytest.mark.mariadb)])
async def test_new_groups_over_the_cap_are_counted_exactly_into_one_overflow_group(
        db: str, setup: tuple[Settings, int, int]) -> None:
    settings, pid, _ = setup
    cap = 3
    async with api_client(settings) as c:
        r = await c.put(f"/api/projects/{pid}/quota", json={"new_groups_per_hour": cap})
        assert r.json()["quota"]["new_groups_per_hour"] == cap
        # 8 client fingerprints, 3 events each, interleaved; then the first groups again
        batch = [{"message": f"KeyError k{i}", "fingerprint": f"random-{i}", "context": {"i": i}}
                 for _ in range(3) for i in range(8)]
        r = await c.post("/errors/batch", json={"events": batch})
        assert r.status_code == 202 and r.json()["accepted"] == 24
        results = r.json()["results"]
        ofp = overflow_fingerprint(pid)
        own = {x["fingerprint"] for x in results if not x.get("overflow")}
        assert len(own) == cap and ofp not in own
        assert sum(1 for x in results if x.get("overflow")) == 15
        assert all(x["fingerprint"] == ofp for x in results if x.get("overflow"))
        r = await c.post("/errors/log", json={"message": "KeyError k0", "fingerprint": "random-0"})
        assert r.json()["fingerprint"] in own and "overflow" not in r.json()  # an existing group
        r = await c.post("/errors/log", json={"message": "KeyError k9", "fingerprint": "random-9"})
        assert r.json()["fingerprint"] == ofp and r.json()["overflow"] is True
        # the other project is not affected by this project's cap
        r = await c.post("/errors/batch", json={"events": [{"message": f"m{i}", "fingerprint": f"x{i}"}
                                                           for i in range(10)]},
                         headers={"X-Faultline-Key": OTHER_KEY})
        assert not any(x.get("overflow") for x in r.json()["results"])
        entry = await project_entry(c, pid)
        assert entry["overflow"] == {"events": 16, "fingerprint": ofp}
        assert entry["dropped"]["total"] == 0
    async with make_redis(settings) as redis:
        keys = Keys.from_settings(settings)
        live = {k.decode(): int(v) for k, v in (await redis.hgetall(keys.live_counts)).items()}
        queued = [Event.model_validate(e) for _, f in await redis.xrange(keys.stream)
                  for e in orjson.loads(f[b"data"])["kwargs"]["events"]]
        assert await redis.zcard(keys.new_groups(pid)) == cap
    assert live[ofp] == 16 and sum(live[fp] for fp in own) == 3 * cap + 1
    overflowed = [e for e in queued if e.fingerprint == ofp]
    assert len(overflowed) == 16 and all(e.message.startswith("Too many new error groups") for e in overflowed)
    originals = {e.context["faultline_overflow"]["message"] for e in overflowed if e.context}
    assert originals == {f"KeyError k{i}" for i in (3, 4, 5, 6, 7, 9)}
    assert await drain_queue(settings) == 24 + 2 + 10
    engine = make_engine(settings)
    async with engine.connect() as conn:
        rows = {r.fingerprint: r for r in await conn.execute(
            select(ErrorGroup.fingerprint, ErrorGroup.count, ErrorGroup.message, ErrorGroup.project_id))}
    await engine.dispose()
    assert len([r for r in rows.values() if r.project_id == pid]) == cap + 1  # 3 groups + the overflow one
    assert rows[ofp].count == 16 and rows[ofp].message.startswith("Too many new error groups")
    assert sum(rows[fp].count for fp in own) == 3 * cap + 1


async def test_admin_api_checks_input_and_auth(setup: tuple[Settings, int, int]) -> None:
    settings, pid, _ = setup
    async with api_client(settings) as c:
        assert (await c.put("/api/projects/999999/quota", json={"per_minute": 5})).status_code == 404
        for bad in ({"per_minute": -1}, {"per_minute": "x"}, {"per_hour": 5}, [1]):
            r = await c.put(f"/api/projects/{pid}/quota", json=bad)
            assert r.status_code == 422 and "error" in r.json(), (bad, r.text)
        r = await c.get("/api/projects", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"] == "invalid_token"
        r = await c.put(f"/api/projects/{pid}/quota", json={"per_minute": 5}, headers={"Authorization": ""})
        assert r.status_code == 401
        names = {p["name"] for p in (await c.get("/api/projects")).json()["items"]}
        assert names == {"test", "other"}


async def test_cli_sets_the_quota_in_the_db_and_redis_and_nodes_copy_it_back(
        setup: tuple[Settings, int, int]) -> None:
    settings, pid, _ = setup
    env = env_of(settings)

    def cli(*args: str) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-m", "faultline", "project", "quota", *args], env=env,
                             capture_output=True, text=True, timeout=60, check=True)
        return orjson.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    shown = await asyncio.to_thread(cli, "test", "--per-minute", "7", "--new-groups-per-hour", "2")
    assert shown["per_minute"] == 7 and shown["new_groups_per_hour"] == 2 and shown["id"] == pid
    shown = await asyncio.to_thread(cli, "test", "--per-second", "3")  # the others are kept
    assert (shown["per_second"], shown["per_minute"], shown["new_groups_per_hour"]) == (3, 7, 2)
    keys = Keys.from_settings(settings)
    async with make_redis(settings) as redis:
        assert (await redis.hget(keys.quota_conf, str(pid))) == b"3|7|2"
        await redis.delete(keys.quota_conf)  # Redis lost its copy: a node start copies it back
    async with api_client(settings) as c, make_redis(settings) as redis:
        async def copied() -> bool:
            return await redis.hget(keys.quota_conf, str(pid)) == b"3|7|2"

        await wait_for(copied, 10, "the node to copy the quotas back into Redis")
        r = await c.post("/errors/batch", json={"events": events(5, "f")})
        assert r.json()["accepted"] == 3 and r.json()["rate_limited"] == 2
        assert (await project_entry(c, pid))["quota"]["per_second"] == 3
