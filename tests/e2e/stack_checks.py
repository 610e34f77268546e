"""What the drain / rollout / crash tests need around a running stack: one stack per module, direct
node probes, waiting for the pipeline to settle, the exactly-once check against the DB, and a figures log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import text

from core.db.engine import make_engine
from core.keys import Keys
from faultline.stack import Stack
from tests.conftest import ARTIFACTS, logged_stack
from tests.e2e.steady_load import SteadyLoad


def wait_settled(stack: Stack, timeout: float = 90.0) -> None:
    """Until every accepted event is written and every count synced: stream empty, nothing pending or
    waiting for a retry, no unsynced count deltas."""
    settings = stack.settings()
    keys = Keys.from_settings(settings)
    client = redis.Redis.from_url(settings.redis_url)
    deadline = time.monotonic() + timeout
    state: list[object] = []
    try:
        while time.monotonic() < deadline:
            pipe = client.pipeline(transaction=False)
            pipe.xlen(keys.stream)
            pipe.zcard(keys.retries)
            pipe.exists(keys.pending_counts)
            pipe.scard(keys.flushing_batches)
            state = pipe.execute()
            if not any(state):
                return
            time.sleep(0.1)  # four cheap reads: polling often costs nothing and ends the wait ~0.25 s sooner
    finally:
        client.close()
    raise TimeoutError(f"pipeline not settled after {timeout}s: stream/retries/pending/flushing = {state}")


def stored_events(stack: Stack, service: str) -> tuple[dict[str, str], Counter[str], dict[str, int]]:
    """One load run's groups in the DB: (event id -> fingerprint of each sample row, sample rows per
    event id, count column per fingerprint)."""
    groups = "SELECT fingerprint, count FROM error_groups WHERE service = :s"
    samples = "SELECT event_id, fingerprint FROM samples WHERE fingerprint IN (SELECT fingerprint FROM ("

    async def read() -> tuple[dict[str, str], Counter[str], dict[str, int]]:
        engine = make_engine(stack.settings())
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(text(f"{samples}{groups}) g)"), {"s": service})).all()
                counts = await conn.execute(text(groups), {"s": service})
                return ({r[0]: r[1] for r in rows}, Counter(r[0] for r in rows),
                        {r[0]: int(r[1]) for r in counts})
        finally:
            await engine.dispose()

    return asyncio.run(read())


def check_exactly_once(stack: Stack, load: SteadyLoad) -> str:
    """Every accepted event stored once (one sample row each) and counted once (the count column of each
    group equals its stored events). An event the server took but whose reply never reached the client
    (every re-send failed) may be stored too: it is reported, and only possible when stats.failed > 0."""
    stats = load.stats
    wait_settled(stack)
    stored, rows, counts = stored_events(stack, load.service)
    missing = [e for e in stats.accepted if e not in stored]
    doubled = [e for e, n in rows.items() if n > 1]
    assert not missing, f"{len(missing)} accepted events not in the DB, e.g. {missing[:3]}"
    assert not doubled, f"{len(doubled)} events stored twice"
    assert counts == dict(Counter(stored.values())), "DB counts disagree with the stored events"
    extra = len(stored) - len(stats.accepted)
    assert extra <= stats.failed, f"{extra} events stored that no client sent"
    if stats.failed == 0:
        assert counts == dict(Counter(stats.accepted.values()))
    return (f"db: {len(stored)} events stored once each, {sum(counts.values())} counted, "
            f"{len(stats.accepted)} accepted by clients, stored-but-unacknowledged={extra}")


@contextlib.contextmanager
def module_stack(base: Path, log_name: str, **config: Any) -> Iterator[tuple[Stack, list[str]]]:
    """A whole stack shared by one test module (tests/conftest.py's stack_factory is per test). Log lines
    go to test-artifacts/<log_name>.log and are also kept in the returned list for assertions."""
    lines: list[str] = []
    env = {**BASE_ENV, **config.pop("env", {})}
    with logged_stack(base, log_name, keep=lines, env=env, **config) as stack:
        yield stack, lines


# Short drain and fast redelivery keep the e2e runtime modest; every sample kept so the DB can be checked
# event by event; the rate limiter off (its own tests cover it, here a 429 would only add noise). Redis
# timeout 2 s instead of 0.5 s: on the shared 2-core box (load average 10+ while other agents test) a
# process can stall 0.5 s with no drain anywhere, and those 503s would say nothing about draining.
BASE_ENV = {"FAULTLINE_DRAIN_DELAY": "1", "FAULTLINE_SHUTDOWN_TIMEOUT": "15", "FAULTLINE_SYNC_INTERVAL": "1",
            "FAULTLINE_REDELIVER_AFTER": "3", "FAULTLINE_SAMPLES_PER_GROUP": "1000000",
            "FAULTLINE_RATE_LIMIT_ENABLED": "false", "FAULTLINE_REDIS_TIMEOUT": "2"}


def node_get(port: int, path: str, timeout: float = 3.0, token: str | None = None) -> tuple[int | None, dict[str, Any]]:
    """GET straight to one node (not through nginx): (status or None when refused, JSON body).
    token: sent as a Bearer token (probes show their figures to the admin only)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers),
                                    timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except OSError:
        return None, {}


def report(line: str) -> None:
    """Print a figure and keep it in test-artifacts/drain-figures.txt (pytest hides prints of passing tests)."""
    print(line)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACTS / "drain-figures.txt", "a") as out:
        out.write(f"{time.strftime('%H:%M:%S')} {line.strip()}\n")
