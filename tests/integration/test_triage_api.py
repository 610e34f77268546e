"""Group states and filters through the read API (real Redis, real DB, the worker's writer and the sync):
state changes need the admin token; an event for a resolved group reopens it as regressed, signalled once;
filters and search page with cursors; hour buckets add up to the exact count."""

from __future__ import annotations

import time
from typing import Any

import pytest

from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings
from tests.integration.conftest import api_client, prepare
from tests.integration.test_read_counts import write_groups

DASHBOARD = "dashboard-token-0123456789"


@pytest.fixture
def settings(make_settings: Any, db_url: str) -> Settings:
    return make_settings(database_url=db_url, dashboard_token=DASHBOARD)


async def post(c: Any, fingerprint: str, n: int = 1, **fields: Any) -> str:
    event = {"message": f"{fingerprint}Error: boom", "fingerprint": fingerprint, **fields}
    r = await c.post("/errors/batch", json={"events": [event] * n})
    assert r.status_code == 202, r.text
    return str(r.json()["results"][0]["fingerprint"])


async def signals(settings: Settings, kind: str = "regression") -> list[dict[str, str]]:
    """The triage stream's entries of one kind (the feed also writes new_group/spike entries for alerting)."""
    redis = make_redis(settings, timeout=5)
    try:
        entries = await redis.xrange(Keys.from_settings(settings).group_signals)
    finally:
        await redis.aclose()
    decoded = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]
    return [entry for entry in decoded if entry["kind"] == kind]


async def write_twice_at_once(settings: Settings) -> None:
    """The queued events written by two workers concurrently (a redelivery racing the first run)."""
    import asyncio

    import orjson

    from core.db.engine import make_engine
    from core.events import Event
    from workers.writer import BatchWriter

    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    engines = [make_engine(settings), make_engine(settings)]
    events = [Event.model_validate(e) for _, f in await redis.xrange(keys.stream)
              for e in orjson.loads(f[b"data"])["kwargs"]["events"]]
    await redis.delete(keys.stream)
    writers = [BatchWriter(settings, engine, redis) for engine in engines]
    await asyncio.gather(*(w.write(events) for w in writers))
    await redis.aclose()
    for engine in engines:
        await engine.dispose()


async def listed(c: Any, **params: Any) -> list[str]:
    r = await c.get("/errors", params={"limit": 500, **params})
    assert r.status_code == 200, r.text
    return [g["fingerprint"] for g in r.json()["items"]]


async def test_states_need_admin_and_a_resolved_group_regresses_once(settings: Settings) -> None:
    from core.db.engine import make_engine
    from workers.sync import sync_counts

    await prepare(settings)
    async with api_client(settings) as c:
        a = await post(c, "alpha", 3)
        b = await post(c, "beta", 2)
        await write_groups(settings)
        path = f"/errors/{a}"
        # refused without the admin token, whatever else is sent
        for headers in ({"Authorization": ""}, {"Authorization": f"Bearer {DASHBOARD}"},
                        {"Authorization": "Bearer wrong-token-000000"}):
            r = await c.patch(path, json={"state": "resolved"}, headers=headers)
            assert r.status_code == 401 and r.json()["error"] in ("missing_token", "invalid_token"), r.text
        # bad input: a clear 4xx naming the problem, never a 500
        for body, status in (({"state": "fixed"}, 422), ({"state": "resolved", "ignore_for_seconds": 60}, 422),
                             ({"state": "ignored", "ignore_for_seconds": 0}, 422), ({}, 422),
                             ({"state": "ignored", "until": 3}, 422), ({"state": None}, 422), ([1], 422),
                             ({"state": "ignored", "ignore_for_seconds": "60"}, 422),
                             ({"state": "ignored", "ignore_until_count": True}, 422),
                             ({"state": "ignored", "ignore_until_count": 10**12}, 422),
                             ({"state": "ignored", "ignore_for_seconds": 3600.5}, 422)):
            r = await c.patch(path, json=body)
            assert r.status_code == status and r.json()["error"] and r.json()["message"], (body, r.text)
        assert (await c.patch("/errors/" + "0" * 64, json={"state": "resolved"})).status_code == 404
        assert (await c.patch("/errors/nothex", json={"state": "resolved"})).status_code == 422
        r = await c.patch(path, content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 422), r.text
        # unchanged by all of that
        assert await listed(c, state="resolved") == []

        r = await c.patch(path, json={"state": "resolved"})
        assert r.status_code == 200 and r.json()["state"] == "resolved" and r.json()["regressed"] is False
        assert await listed(c, state="resolved") == [a]
        assert await listed(c, state="unresolved") == [b]
        reader = {"Authorization": f"Bearer {DASHBOARD}"}
        assert (await c.get("/errors", params={"state": "resolved"}, headers=reader)).json()["items"][0][
            "fingerprint"] == a  # the read-only token sees states
        assert (await c.get("/errors", params={"state": "gone"})).status_code == 422

        await post(c, "alpha")  # after the resolve: reopens it, once, though two workers write it at once
        await write_twice_at_once(settings)
        g = (await c.get(path)).json()
        assert (g["state"], g["regressed"], g["count"]) == ("unresolved", True, 4)
        assert await listed(c, state="regressed") == [a]
        sent = await signals(settings)
        assert [(s["kind"], s["fingerprint"], s["project_id"]) for s in sent] == [("regression", a, "1")]
        assert int(sent[0]["at"]) > 0 and sent[0]["count"] == "4"
        await post(c, "alpha")  # already unresolved: no second transition
        await write_groups(settings)
        assert len(await signals(settings)) == 1

        # hour buckets add up to the exact count, before and after the sync moves them to the DB
        for _ in range(2):
            g = (await c.get(path)).json()
            assert sum(n for _, n in g["hourly"]["counts"]) == g["count"] == 5
            engine = make_engine(settings)
            redis = make_redis(settings, timeout=5)
            await sync_counts(redis, engine, Keys.from_settings(settings))
            await redis.aclose()
            await engine.dispose()

        # hour buckets older than the retention go; newer ones stay
        from sqlalchemy import insert, select

        from core.db.models import GroupHour
        from workers.sync import housekeeping

        engine = make_engine(settings)
        now_hour = int(time.time() // 3600)
        async with engine.begin() as conn:
            await conn.execute(insert(GroupHour), [{"project_id": 1, "fingerprint": a, "hour": now_hour - 24 * d,
                                                    "count": 1} for d in (15, 20, 30)])
        await housekeeping(engine, hourly_days=14)
        async with engine.connect() as conn:
            kept = sorted((await conn.execute(select(GroupHour.hour).where(GroupHour.fingerprint == a))).scalars())
        await engine.dispose()
        assert kept and min(kept) >= now_hour - 1  # this hour's bucket (or the last one's, at hh:59:59)

        # a person's change clears the flag
        r = await c.patch(path, json={"state": "unresolved"})
        assert r.json()["regressed"] is False and await listed(c, state="regressed") == []


async def test_ignored_until_more_events_or_for_a_while(make_settings: Any) -> None:
    import asyncio

    settings = make_settings()
    await prepare(settings)
    async with api_client(settings) as c:
        a = await post(c, "counted", 2)
        b = await post(c, "timed", 1)
        await write_groups(settings)
        r = await c.patch(f"/errors/{a}", json={"state": "ignored", "ignore_until_count": 3})
        assert r.status_code == 200 and r.json()["ignore_until_count"] == 5, r.text
        assert (await c.patch(f"/errors/{b}", json={"state": "ignored", "ignore_for_seconds": 1})).status_code == 200
        await post(c, "counted", 2)
        await post(c, "timed", 1)  # within the second
        await write_groups(settings)
        assert set(await listed(c, state="ignored")) == {a, b}
        await asyncio.sleep(1.1)
        await post(c, "counted", 1)  # the 3rd more event
        await post(c, "timed", 1)  # after the second
        await write_groups(settings)
        assert set(await listed(c, state="regressed")) == {a, b}
        assert {s["fingerprint"] for s in await signals(settings)} == {a, b}


async def test_filters_and_search_page_with_cursors(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from api.routes import groups

    await prepare(settings)
    async with api_client(settings) as c:
        fps = {}
        for i in range(6):
            svc, lvl = ("web", "error") if i % 2 else ("jobs", "warning")
            r = await c.post("/errors/log", json={
                "message": f"KeyError: 'cart_{i}' missing 100% of the time" if i < 4 else f"Timeout after {i}s",
                "service": svc, "level": lvl, "fingerprint": f"f{i}"})
            fps[i] = r.json()["fingerprint"]
        await write_groups(settings)
        assert set(await listed(c, service="web")) == {fps[1], fps[3], fps[5]}
        assert set(await listed(c, level="warning")) == {fps[0], fps[2], fps[4]}
        assert set(await listed(c, service="web", level="warning")) == set()
        assert set(await listed(c, q="keyerror")) == {fps[0], fps[1], fps[2], fps[3]}  # case-insensitive
        assert set(await listed(c, q="100%")) == {fps[0], fps[1], fps[2], fps[3]}
        assert await listed(c, q="100%_") == []  # % and _ are text, not wildcards
        for hostile in ("\\", "'; DROP TABLE error_groups; --", "%" * 200, "\u00e9\U0001f600", "[a-z]*"):
            assert await listed(c, q=hostile) == [], hostile
        assert set(await listed(c, q="cart", service="web")) == {fps[1], fps[3]}
        for bad in ({"q": ""}, {"q": "x" * 201}, {"level": "loud"}, {"q": "a\x00"}):
            r = await c.get("/errors", params=bad)
            assert r.status_code == 422 and r.json()["error"] == "invalid_request", r.text
        # a filtered search pages with cursors: every match once
        seen: list[str] = []
        params: dict[str, Any] = {"q": "cart", "limit": 1, "sort": "last_seen"}
        while True:
            body = (await c.get("/errors", params=params)).json()
            seen += [g["fingerprint"] for g in body["items"]]
            if not body["next_cursor"]:
                break
            params["cursor"] = body["next_cursor"]
        assert sorted(seen) == sorted(fps[i] for i in range(4))
        # the search window is bounded: past it the answer says so and its cursor goes on after it
        monkeypatch.setattr(groups, "SEARCH_SCAN", 2)
        params = {"q": "Timeout", "sort": "last_seen"}  # the 2 newest groups are the Timeouts: window = them
        found: list[str] = []
        limited = []
        while True:
            body = (await c.get("/errors", params={**params, "limit": 5})).json()
            found += [g["fingerprint"] for g in body["items"]]
            limited.append(body["search_limited"])
            if not body["next_cursor"]:
                break
            params["cursor"] = body["next_cursor"]
        assert sorted(found) == sorted([fps[4], fps[5]]) and True in limited


async def test_a_scoped_dashboard_token_opens_the_group_pages_of_its_projects_only(make_settings: Any) -> None:
    """The group page's API (GET /errors/{fp}) with a dashboard token limited to some projects: its own
    project's group opens, another project's group is as absent as an unknown one, lists stay scoped."""
    reader = {"Authorization": f"Bearer {DASHBOARD}"}
    mine = make_settings(dashboard_token=DASHBOARD, dashboard_projects="1")
    pid = await prepare(mine)
    assert pid == 1
    async with api_client(mine) as c:
        fp = await post(c, "scoped")
        await write_groups(mine)
        r = await c.get(f"/errors/{fp}", headers=reader)
        assert r.status_code == 200 and r.json()["project_id"] == 1, r.text
        assert (await c.get("/errors", params={"project_id": 1}, headers=reader)).status_code == 200
        assert (await c.get("/errors", headers=reader)).status_code == 403  # a list names its project
    others = make_settings(dashboard_token=DASHBOARD, dashboard_projects="2,3")
    async with api_client(others) as c:
        r = await c.get(f"/errors/{fp}", headers=reader)
        assert r.status_code == 404 and r.json()["error"] == "not_found", r.text
        assert (await c.get(f"/errors/{fp}")).status_code == 200  # the admin token reads every project
