"""Steady ingest load for the drain / rollout / crash tests: N concurrent clients, each on its own
keep-alive connection, posting one event at a time with a unique event id and a known group.

It runs in a thread with its own event loop so a test can meanwhile restart or kill processes
synchronously. It records every status, every transport error, and every event the server accepted, so
the test can check the DB holds each accepted event exactly once (tests/e2e/stack_checks.py).

A transport error (connection reset / closed with no response) is re-sent with the SAME event id, as an
SDK does; the server deduplicates by event id, so a re-send never counts twice. Those are reported
separately from failures (no 202 after the re-sends), which is what "failed requests" means here.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

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
