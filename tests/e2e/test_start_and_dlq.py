"""Start order and dead letters on the real local stack.

- Right after Stack.start() returns (nginx opened only once every node was ready, and a real request
  through it answered), 50 requests through nginx all get 202: no 502/503 "no live upstreams".
- Dead letters: a poison task dead-letters for real and shows in GET /admin/dlq and `faultline dlq`;
  replaying a dead message whose events were already stored, twice over, neither stores nor counts
  anything twice (counts come from the ingest script; the worker's writes are idempotent).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import httpx
import orjson
import pytest
import redis

from core.keys import Keys
from core.tasks import persist_message
from faultline.stack import Stack
from tests.e2e.stack_checks import stored_events, wait_settled

pytestmark = pytest.mark.e2e


async def _burst(stack: Stack, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=10,
                                 headers={"X-Faultline-Key": stack.ingest_key}) as client:
        replies = await asyncio.gather(*[client.post("/errors/log", json={"message": f"early {i}"})
                                         for i in range(n)])
    return [r.status_code for r in replies]


def test_no_502_right_after_start(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory(nodes=3, workers=1)
    codes = asyncio.run(_burst(stack, 50))
    assert codes == [202] * 50, sorted(set(codes))


def test_dead_letters_list_show_replay_purge(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory(nodes=1, workers=1, env={"FAULTLINE_RETRY_BASE_DELAY": "0.1",
                                                   "FAULTLINE_RETRY_MAX_ATTEMPTS": "2",
                                                   "FAULTLINE_SYNC_INTERVAL": "1",
                                                   "FAULTLINE_SAMPLES_PER_GROUP": "1000"})
    settings = stack.settings()
    keys = Keys.from_settings(settings)
    r = redis.Redis.from_url(settings.redis_url)
    admin = {"Authorization": f"Bearer {stack.admin_token}"}
    service = f"dlq-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=stack.url, timeout=10) as http:
        # 1. a real dead letter: a task the worker can never run
        poison = uuid.uuid4().hex
        r.xadd(keys.stream, {"data": persist_message([{"bogus": True}], task_id=poison)})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and http.get("/admin/dlq", headers=admin).json()["total"] == 0:
            time.sleep(0.2)
        listing = http.get("/admin/dlq", headers=admin).json()
        assert listing["total"] == 1 and listing["items"][0]["task_id"] == poison, listing
        assert "ValidationError" in listing["items"][0]["error"]
        shown = http.get(f"/admin/dlq/{poison}", headers=admin)
        assert shown.status_code == 200 and shown.json()["attempts"] == 2
        assert http.get("/admin/dlq", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/admin/dlq/no-such-task", headers=admin).status_code == 404

        # 2. an event accepted and stored; then its task shows up dead twice (as if it had failed after
        # writing) and is replayed twice: once through the API, once with `faultline dlq replay --all`
        accepted = http.post("/errors/log", headers={"X-Faultline-Key": stack.ingest_key},
                             json={"message": "replayed twice", "service": service})
        assert accepted.status_code == 202
        event_id, fingerprint = accepted.json()["event_id"], accepted.json()["fingerprint"]
        wait_settled(stack)
        stored, _, counts = stored_events(stack, service)
        assert stored == {event_id: fingerprint} and counts == {fingerprint: 1}
        event = {"event_id": event_id, "project_id": 1, "fingerprint": fingerprint, "received_at": time.time(),
                 "message": "replayed twice", "level": "error", "service": service}
        dead_ids = [uuid.uuid4().hex, uuid.uuid4().hex]
        for tid in dead_ids:
            msg = orjson.loads(persist_message([event], task_id=tid))
            r.lpush(keys.dead_letters, orjson.dumps({"task_id": tid, "task_name": msg["task_name"], "attempts": 5,
                                                     "error": "OperationalError: simulated", "failed_at": time.time(),
                                                     "message": orjson.dumps(msg).decode()}))
        assert http.post(f"/admin/dlq/{dead_ids[0]}/replay", headers=admin).status_code == 202
        assert http.post(f"/admin/dlq/{dead_ids[0]}/replay", headers=admin).status_code == 404  # gone
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTLINE_")}
        env.update({"FAULTLINE_REDIS_URL": settings.redis_url, "FAULTLINE_DATABASE_URL": stack.database_url,
                    "FAULTLINE_KEY_PREFIX": settings.key_prefix})
        cli = subprocess.run([sys.executable, "-m", "faultline", "dlq", "replay", "--all"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0 and "replayed 2" in cli.stdout, cli  # the poison task and the second copy
        wait_settled(stack)
        assert [orjson.loads(r.get(keys.job(t)) or b"{}").get("state") for t in dead_ids] == ["replayed"] * 2
        deadline = time.monotonic() + 30
        def job_state() -> str:
            return str(http.get(f"/jobs/{event_id}", headers=admin).json()["state"])

        while time.monotonic() < deadline and job_state() != "succeeded":
            time.sleep(0.2)
        assert job_state() == "succeeded"
        time.sleep(2)  # one more sync interval: nothing left to add
        stored, rows, counts = stored_events(stack, service)
        assert rows == {event_id: 1} and counts == {fingerprint: 1}  # stored once, counted once

        # 3. purge (the poison task dead again after its replay)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and http.get("/admin/dlq", headers=admin).json()["total"] == 0:
            time.sleep(0.2)
        purged = http.delete("/admin/dlq", headers=admin).json()["purged"]
        assert purged == 1 and http.get("/admin/dlq", headers=admin).json()["total"] == 0
    r.close()
