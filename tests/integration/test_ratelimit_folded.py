"""The rate limiter folded into the ingest call (api/ratelimit.py, ingest.lua): one Redis call per request for
both, the same windows and answers as the limiter's own call, and a lost reply's re-run logs nothing twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from core.keys import Keys
from core.ratelimit.redis_limiter import RedisLimiter
from core.settings import Settings
from tests.integration.conftest import api_client, prepare
from tests.integration.test_ingest_ambiguity import LoseReplies, counted

LIMITS = "short:3/5s,long:1000/h"
# folded with one key shard only (api/ratelimit.py), whatever FAULTLINE_REDIS_SHARDS the suite runs with


@pytest.fixture
def own_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call the limiter makes on its own (not inside an ingest call)."""
    calls: list[str] = []
    real = RedisLimiter.hit

    async def spy(self: RedisLimiter, client: str, tiers: Any) -> Any:
        calls.append(client)
        return await real(self, client, tiers)

    monkeypatch.setattr(RedisLimiter, "hit", spy)
    return calls


async def test_one_call_per_request_for_limiter_and_ingest(make_settings: Any, own_calls: list[str]) -> None:
    settings = make_settings(rate_limit_enabled=True, rate_limits=LIMITS, redis_shards=1)
    await prepare(settings)
    async with api_client(settings) as c:
        ingestor = c._transport.app.state.ingestor  # type: ignore[attr-defined]
        calls = LoseReplies(ingestor.script, lose=0)
        ingestor.script = calls
        answers = [await c.post("/errors/log", json={"message": f"E{i}"}) for i in range(3)]
        assert [r.status_code for r in answers] == [202, 202, 202]
        assert [r.headers["x-ratelimit-remaining"] for r in answers] == ["2", "1", "0"]
        refused = await c.post("/errors/batch", json={"events": [{"message": "E9"}]})
        limited = await c.post("/errors/log", json={"message": "E4"})
    assert calls.calls == 5 and own_calls == []  # one ingest call per request, the limiter inside it
    assert refused.status_code == 202  # the batch route has its own window (default routes: short:20/s)
    assert limited.status_code == 429
    body = limited.json()
    assert body["error"] == "rate_limited" and body["message"] == "Rate limit exceeded"
    assert body["details"]["tier"] == "short" and 4000 < body["details"]["retry_after_ms"] <= 5000
    assert limited.headers["retry-after"] == str(-(-body["details"]["retry_after_ms"] // 1000))
    assert limited.headers["x-ratelimit-limit"] == "3" and limited.headers["x-ratelimit-remaining"] == "0"
    assert await counted(settings) == (4, 4)  # the refused request counted nothing


async def test_requests_answered_before_ingest_use_the_window_as_before(make_settings: Any,
                                                                        own_calls: list[str]) -> None:
    """A bad body is refused (422) before any ingest call: the limiter's own call logs it, and once the
    window is full the 429 replaces the route's answer, whatever the body."""
    settings = make_settings(rate_limit_enabled=True, rate_limits=LIMITS, redis_shards=1)
    await prepare(settings)
    async with api_client(settings) as c:
        bad = [await c.post("/errors/log", json={"message": "E", "stacktrace": "x"}) for _ in range(2)]
        good = await c.post("/errors/log", json={"message": "E1"})
        after = [await c.post("/errors/log", json={"message": "E2"}),
                 await c.post("/errors/log", json={"message": "E", "stacktrace": "x"})]
    assert [r.status_code for r in bad] == [422, 422] and good.status_code == 202
    assert [r.headers["x-ratelimit-remaining"] for r in [*bad, good]] == ["2", "1", "0"]
    assert [r.status_code for r in after] == [429, 429]
    assert after[1].json()["error"] == "rate_limited"  # not the 422 the route answered
    assert len(own_calls) == 3  # the two bad bodies and the last one; the good ones rode in their calls
    assert await counted(settings) == (1, 1)


@asynccontextmanager
async def limited_client(settings: Settings, lose: int) -> AsyncIterator[tuple[Any, Any, LoseReplies]]:
    """An API client whose ingest script calls are recorded (and the first `lose` replies lost)."""
    await prepare(settings)
    async with api_client(settings) as c:
        ingestor = c._transport.app.state.ingestor  # type: ignore[attr-defined]
        calls = LoseReplies(ingestor.script, lose=lose)
        ingestor.script = calls
        yield c, ingestor, calls


async def test_rerun_of_a_lost_reply_logs_the_request_once(make_settings: Any, own_calls: list[str]) -> None:
    """The call ran (window logged, event counted), its reply was lost, the re-run with the same token finds
    the request's entry and answers it admitted without logging it again."""
    settings = make_settings(rate_limit_enabled=True, rate_limits=LIMITS, redis_shards=1)
    keys = Keys.from_settings(settings)
    async with limited_client(settings, lose=1) as (c, ingestor, lossy):
        first = await c.post("/errors/log", json={"message": "E1"})
        assert first.status_code == 202 and lossy.calls == 2  # lost, then re-run
        assert first.headers["x-ratelimit-remaining"] == "2"
        redis = ingestor.runtime.redis
        windows = [k async for k in redis.scan_iter(match=keys.ratelimit("short", "*"))]
        assert len(windows) == 1 and await redis.zcard(windows[0]) == 1
        codes = [(await c.post("/errors/log", json={"message": f"E{i}"})).status_code for i in range(3)]
    assert codes == [202, 202, 429] and own_calls == []
    assert await counted(settings) == (3, 3)


async def test_requests_sharing_one_call_get_the_answers_of_one_call_each(make_settings: Any,
                                                                          own_calls: list[str]) -> None:
    """Concurrent requests of one client ride in ONE ingest call, where the script reads each window once
    (_sliding_window.lua `seen`) and gets each tier set once: still exactly `limit` admitted, each with its
    own remaining count, the rest refused with the blocking entry's wait, each admitted request logged once."""
    settings = make_settings(rate_limit_enabled=True, rate_limits=LIMITS, redis_shards=1)
    keys = Keys.from_settings(settings)
    async with limited_client(settings, lose=0) as (c, ingestor, calls):
        # and a batch: another tier set (its own short window, the shared long one) in the same call
        *answers, batch = await asyncio.gather(*(c.post("/errors/log", json={"message": f"E{i}"}) for i in range(6)),
                                               c.post("/errors/batch", json={"events": [{"message": "B"}]}))
        redis = ingestor.runtime.redis
        [short] = [k async for k in redis.scan_iter(match=keys.ratelimit("short", "*"))]
        [long] = [k async for k in redis.scan_iter(match=keys.ratelimit("long", "*"))]
        sizes, ttl = (await redis.zcard(short), await redis.zcard(long)), await redis.pttl(short)
    assert calls.calls == 1 and own_calls == []  # all six in one script call
    codes = sorted(r.status_code for r in answers)
    assert codes == [202, 202, 202, 429, 429, 429]
    admitted = [r for r in answers if r.status_code == 202]
    assert sorted(r.headers["x-ratelimit-remaining"] for r in admitted) == ["0", "1", "2"]
    for r in answers:
        if r.status_code == 429:
            assert r.json()["details"]["tier"] == "short" and 4000 < r.json()["details"]["retry_after_ms"] <= 5000
    assert batch.status_code == 202 and batch.headers["x-ratelimit-remaining"] == "19"
    assert sizes == (3, 4) and 0 < ttl <= 5000  # logged once each, the set expires with its window
    assert await counted(settings) == (4, 4)
