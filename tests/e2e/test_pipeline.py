"""End to end on the stack `faultline up` runs (3 nodes, nginx, 2 workers, scheduler, MariaDB)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from core.db.engine import make_engine
from core.db.models import ErrorGroup
from core.keys import Keys
from core.redis import make_redis
from faultline.stack import Stack
from tests.conftest import logged_stack
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with logged_stack(tmp_path_factory.mktemp("pipeline"), "e2e_pipeline", db="mariadb",
                      env={"FAULTLINE_SYNC_INTERVAL": "1", "FAULTLINE_REDELIVER_AFTER": "3",
                           "FAULTLINE_RATE_LIMIT_ENABLED": "false"}) as st:
        yield st


async def post(session: aiohttp.ClientSession, url: str, key: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with session.post(url, json=body, headers={"X-Faultline-Key": key}) as r:
        return r.status, await r.json(content_type=None)


async def test_events_through_nginx_spread_over_three_nodes_and_show_up_counted(stack: Stack) -> None:
    marker = f"SpreadError: probe {time.time_ns()}"
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(*[
            post(s, f"{stack.url}/errors/log", stack.ingest_key, {"message": marker, "service": "e2e"})
            for _ in range(90)])
        assert {code for code, _ in results} == {202}
        fps = {body["fingerprint"] for _, body in results}
        assert len(fps) == 1
        fp = fps.pop()
        access_log = Path(stack.nginx.prefix) / "access.log"  # type: ignore[union-attr]
        upstreams: set[str] = set()

        async def logged() -> bool:  # nginx flushes its access log every second: all 90 lines within ~1 s
            nonlocal upstreams
            lines = re.findall(r"POST /errors/log HTTP/1.1\" 202 .* up=(\S+)", access_log.read_text())
            upstreams = set(lines)
            return len(lines) >= 90
        with contextlib.suppress(AssertionError):
            await wait_for(logged, 1.5, "the 90 requests in nginx's access log")
        assert len(upstreams) == 3, upstreams

        async def counted() -> bool:
            async with s.get(f"{stack.url}/errors/{fp}",
                             headers={"Authorization": f"Bearer {stack.admin_token}"}) as r:
                return r.status == 200 and (await r.json())["count"] == 90

        started = time.monotonic()
        await wait_for(counted, 10, "the group to show its 90 events")
        assert time.monotonic() - started < 1 + 3  # one sync interval (1 s) plus margin
        async with s.get(f"{stack.url}/errors", params={"service": "e2e"},
                         headers={"Authorization": f"Bearer {stack.admin_token}"}) as r:
            items = (await r.json())["items"]
        assert [(g["message"], g["count"]) for g in items] == [(marker, 90)]


async def test_nginx_refuses_an_oversized_body_with_json(stack: Stack) -> None:
    async with aiohttp.ClientSession() as s:
        body = b'{"message": "' + b"x" * 2_000_000 + b'"}'
        async with s.post(f"{stack.url}/errors/log", data=body, headers={
                "X-Faultline-Key": stack.ingest_key, "Content-Type": "application/json"}) as r:
            assert r.status == 413
            assert (await r.json(content_type=None))["error"] == "body_too_large"


async def test_ten_thousand_events_with_a_worker_sigkilled_counted_exactly(stack: Stack) -> None:
    fingerprints = [f"e2e-kill-{i}" for i in range(20)]
    accepted: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    total = 10_000
    sem = asyncio.Semaphore(64)

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        async with sem:
            body = {"message": f"KillError: item {i}", "fingerprint": fingerprints[i % 20], "service": "kill"}
            code, reply = await post(session, f"{stack.url}/errors/log", stack.ingest_key, body)
            statuses[code] += 1
            if code == 202 and not reply.get("duplicate"):
                accepted[reply["fingerprint"]] += 1

    async def killer() -> None:
        await asyncio.sleep(2.0)
        victim = stack.workers[0]
        victim.signal(signal.SIGKILL)
        await asyncio.sleep(0.5)
        stack.supervise_once()  # the supervisor restarts it, as `faultline up` does
        assert victim.restarts == 1

    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as s:
        await asyncio.gather(killer(), *[one(s, i) for i in range(total)])
    assert statuses == Counter({202: total}), statuses
    assert sum(accepted.values()) == total

    settings = stack.settings()
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)

    async def drained() -> bool:
        return (await redis.xlen(keys.stream) == 0 and await redis.zcard(keys.retries) == 0
                and not await redis.exists(keys.pending_counts))

    await wait_for(drained, 90, "workers to drain the queue and the scheduler to sync")
    await asyncio.sleep(1.5)  # one more sync interval
    engine = make_engine(settings)
    async with engine.connect() as conn:
        rows = dict((await conn.execute(select(ErrorGroup.fingerprint, ErrorGroup.count)
                                        .where(ErrorGroup.fingerprint.in_(list(accepted))))).all())
    await engine.dispose()
    await redis.aclose()
    assert rows == dict(accepted), {fp: (rows.get(fp), n) for fp, n in accepted.items() if rows.get(fp) != n}


async def test_a_full_batch_through_nginx(stack: Stack) -> None:
    events = [{"message": f"BatchError: row {i}", "fingerprint": f"batch-{i % 7}", "stack": "x" * 200}
              for i in range(1000)]  # ~300 KB: larger than any nginx buffer default
    async with aiohttp.ClientSession() as s:
        code, body = await post(s, f"{stack.url}/errors/batch", stack.ingest_key, {"events": events})
    assert code == 202, body
    assert body["accepted"] == 1000 and len({r["fingerprint"] for r in body["results"]}) == 7
