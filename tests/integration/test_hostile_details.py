"""The smaller points of the hostile-input pass, in-process against real Redis: probes hide figures and
error texts from anonymous callers, X-Edge-Request-ID is believed only from trusted proxies, the access
log cannot be split by a path, the nesting limit is a setting."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from faultline.services import free_port
from tests.integration.conftest import api_client, prepare


async def test_probes_show_only_statuses_without_the_admin_token(make_settings: Any) -> None:
    s = make_settings()
    await prepare(s)
    dead = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout=0.2)
    for settings, expect in ((s, 200), (dead, 503)):
        async with api_client(settings) as c:
            # /health: the probe for people, which Redis decides (readiness is per node and stays 200)
            anonymous = await c.get("/health", headers={"Authorization": ""})
            admin = await c.get("/health")
        assert anonymous.status_code == admin.status_code == expect
        body = anonymous.json()
        assert all(set(check) == {"status"} for check in body["details"].values()), body
        assert "127.0.0.1" not in anonymous.text and "Error" not in anonymous.text
        full = admin.json()["details"]
        assert "waiting" in full["queue"] or full["queue"]["status"] == "down"
        if expect == 503:
            assert full["redis"]["status"] == "down" and full["redis"]["message"]  # the admin sees why
            assert set(body["error"]["redis"]) == {"status"}


@pytest.mark.parametrize(("trusted", "second_is_duplicate"), [("127.0.0.1/32", True), ("10.0.0.0/8", False)])
async def test_edge_request_id_is_believed_only_from_trusted_proxies(make_settings: Any, trusted: str,
                                                                     second_is_duplicate: bool) -> None:
    s = make_settings(trusted_proxies=trusted)  # the in-process client connects from 127.0.0.1
    await prepare(s)
    async with api_client(s) as c:
        headers = {"X-Edge-Request-ID": "edge0123456789abcdef"}
        first = await c.post("/errors/log", json={"message": "retried by the edge"}, headers=headers)
        second = await c.post("/errors/log", json={"message": "retried by the edge"}, headers=headers)
    assert first.status_code == second.status_code == 202
    assert (first.json()["event_id"] == second.json()["event_id"]) is second_is_duplicate
    assert second.json().get("duplicate", False) is second_is_duplicate


async def test_access_log_escapes_the_path(make_settings: Any, caplog: pytest.LogCaptureFixture) -> None:
    s = make_settings()
    await prepare(s)
    caplog.set_level(logging.INFO, logger="faultline.access")
    async with api_client(s) as c:
        r = await c.get("/nope%0A2026-01-01 INFO forged%1B[31m")
    assert r.status_code == 404
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "faultline.access"]
    assert lines and all("\n" not in line and "\x1b" not in line for line in lines)
    assert any("%0A" in line for line in lines), lines


async def test_nesting_limit_is_a_setting(make_settings: Any) -> None:
    s = make_settings(max_depth=3)
    await prepare(s)
    async with api_client(s) as c:
        ok = await c.post("/errors/log", json={"message": "m", "context": {"a": {"b": [1]}}})
        deep = await c.post("/errors/log", json={"message": "m", "context": {"a": {"b": [[1]]}}})
    assert ok.status_code == 202, ok.text
    assert deep.status_code == 422 and deep.json()["details"][0]["field"] == "context", deep.text
    assert "deeper than 3 levels" in deep.json()["details"][0]["problem"]
