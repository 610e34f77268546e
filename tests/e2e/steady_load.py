"""Steady ingest load for the drain / rollout / crash tests: N concurrent clients, each on its own
keep-alive connection, posting one event at a time with a unique event id and a known group.

It runs in a thread with its own event loop so a test can meanwhile restart or kill processes
synchronously. It records every status, every transport error, and every event the server accepted, so
the test can check the DB holds each accepted event exactly once.

A transport error (connection reset / closed with no response) is re-sent with the SAME event id, as an
SDK does; the server deduplicates by event id, so a re-send never counts twice. Those are reported
separately from failures (no 202 after the re-sends), which is what "failed requests" means here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis
from sqlalchemy import text

from core.db.engine import make_engine
from core.keys import Keys
from faultline.stack import Stack, StackConfig
from tests.conftest import ARTIFACTS

RESENDS = 3


@dataclass
class LoadStats:
    sent: int = 0  # HTTP requests written (first attempts + re-sends)
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    failed: int = 0  # events with no 202 after every re-send
    resent_ok: int = 0  # events accepted on a re-send after a transport error
    resent_duplicates: int = 0  # ... of which the server had already taken the first attempt
    accepted: dict[str, str] = field(default_factory=dict)  # event id -> fingerprint the server returned
    unexpected: list[str] = field(default_factory=list)  # first few non-202/429 bodies, for the report

    @property
    def ok(self) -> int:
        return self.statuses.get(202, 0)

    @property
    def bad_statuses(self) -> int:
        return sum(n for code, n in self.statuses.items() if code not in (202, 429))

    def summary(self) -> str:
        return (f"requests={self.sent} 202={self.ok} 429={self.statuses.get(429, 0)} "
                f"other_status={self.bad_statuses} {dict(self.statuses)} "
                f"transport_errors={sum(self.transport_errors.values())} {dict(self.transport_errors)} "
                f"resent_ok={self.resent_ok} (already taken: {self.resent_duplicates}) "
                f"failed_events={self.failed} accepted_events={len(self.accepted)}")


class SteadyLoad:
    def __init__(self, url: str, key: str, clients: int = 100, groups: int = 20, think: float = 0.2) -> None:
        self.url = url.rstrip("/") + "/errors/log"
        self.key = key
        self.clients = clients
        self.groups = groups
        # pause between two events of one client: 100 clients x 0.2 s caps the offered load near 500 req/s, which
        # leaves the shared 2-core box the CPU to start replacement processes during a rollout
        self.think = think
        self.stats = LoadStats()
        # One service per load run: the DB checks look at this run's events only.
        self.service = f"steady-{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> LoadStats:
        self._stop.set()
        self._thread.join(timeout=60)
        return self.stats

    def wait_requests(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        start = self.stats.sent
        while self.stats.sent - start < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.stats.sent - start} of {n} requests in {timeout}s")
            time.sleep(0.05)

    async def _main(self) -> None:
        await asyncio.gather(*(self._client(i) for i in range(self.clients)))

    async def _client(self, index: int) -> None:
        conn = aiohttp.TCPConnector(limit=1, force_close=False)
        timeout = aiohttp.ClientTimeout(total=30)
        headers = {"X-Faultline-Key": self.key}
        async with aiohttp.ClientSession(connector=conn, timeout=timeout, headers=headers) as session:
            n = 0
            while not self._stop.is_set():
                n += 1
                group = (index + n) % self.groups
                event = {"event_id": uuid.uuid4().hex, "message": f"steady load error {group}",
                         "service": self.service, "fingerprint": f"{self.service}-{group}"}
                await self._send(session, event)
                await asyncio.sleep(self.think)

    async def _send(self, session: aiohttp.ClientSession, event: dict[str, str]) -> None:
        st = self.stats
        resend = False
        for _attempt in range(1 + RESENDS):
            st.sent += 1
            try:
                async with session.post(self.url, json=event) as resp:
                    body = await resp.json(content_type=None)
                    st.statuses[resp.status] += 1
                    if resp.status == 202:
                        st.accepted[event["event_id"]] = body["fingerprint"]
                        st.resent_ok += resend
                        st.resent_duplicates += resend and bool(body.get("duplicate"))
                        return
                    if resp.status != 429 and len(st.unexpected) < 5:
                        st.unexpected.append(f"{resp.status} {body}")
                    if resp.status not in (429, 503):
                        break
                    await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
            except (TimeoutError, aiohttp.ClientError) as exc:
                st.transport_errors[type(exc).__name__] += 1
                resend = True
                await asyncio.sleep(0.05)
        st.failed += 1


def wait_settled(stack: Stack, timeout: float = 90.0) -> None:
    """Until every accepted event is written and every count synced: stream empty, nothing pending or
    waiting for a retry, no unsynced count deltas."""
    settings = stack.settings()
    keys = Keys(settings.key_prefix)
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
            time.sleep(0.5)
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
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    with open(ARTIFACTS / f"{log_name}.log", "w") as log:

        def sink(line: str) -> None:
            lines.append(line)
            log.write(line + "\n")
            log.flush()

        env = {**BASE_ENV, **config.pop("env", {})}
        stack = Stack(StackConfig(base_dir=base, port=0, sink=sink, env=env, **config))
        try:
            stack.start()
            yield stack, lines
        finally:
            stack.stop()


# Short drain and fast redelivery keep the e2e runtime modest; every sample kept so the DB can be checked
# event by event; the rate limiter off (its own tests cover it, here a 429 would only add noise). Redis
# timeout 2 s instead of 0.5 s: on the shared 2-core box (load average 10+ while other agents test) a
# process can stall 0.5 s with no drain anywhere, and those 503s would say nothing about draining.
BASE_ENV = {"FAULTLINE_DRAIN_DELAY": "1", "FAULTLINE_SHUTDOWN_TIMEOUT": "15", "FAULTLINE_SYNC_INTERVAL": "1",
            "FAULTLINE_REDELIVER_AFTER": "3", "FAULTLINE_SAMPLES_PER_GROUP": "1000000",
            "FAULTLINE_RATE_LIMIT_ENABLED": "false", "FAULTLINE_REDIS_TIMEOUT": "2"}


def node_get(port: int, path: str, timeout: float = 3.0) -> tuple[int | None, dict[str, Any]]:
    """GET straight to one node (not through nginx): (status or None when refused, JSON body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except OSError:
        return None, {}
