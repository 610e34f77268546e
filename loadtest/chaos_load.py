"""The chaos load: N keep-alive clients posting events with unique ids for the whole run, like SDKs do.

Each client posts one event at a time (a short think time between posts) and keeps a small retry queue:
an event answered 429/503 (refused, not counted), 5xx other than 503 or a transport error (ambiguous: may
have been counted) is re-sent later with the SAME event id, as an SDK does; the server deduplicates by id,
so a re-send can never count twice. A share of posts deliberately re-sends an id already answered 202
(must come back `"duplicate": true`). After the run, `settle()` keeps re-sending until every event has a
definite answer, so the accounting knows exactly which ids the server accepted.

Everything is recorded per request (start, latency, status) and per event id (each attempt's status), so
the accounting can also catch the two lies a server can tell: a 503 for an event it counted (its re-send
comes back "duplicate"), and a 202 for a re-send it counts again (dedup missed).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field

import aiohttp
import orjson

TRANSPORT = 0  # status recorded for a transport error or a client-side timeout (no HTTP answer)
REFUSED = frozenset({429, 503})  # the server says: not counted, try later
MAX_ATTEMPTS = 40  # per event: enough for a 60 s outage at <= 2 s between re-sends


def ambiguous(status: int) -> bool:
    """No answer, or a server error that is not an explicit refusal: the event may have been counted."""
    return status == TRANSPORT or (status >= 500 and status != 503)


@dataclass
class EventRecord:
    template: int
    statuses: list[int] = field(default_factory=list)  # one per attempt, in order
    fingerprint: str | None = None  # from the first 202
    duplicate_first_202: bool = False  # the first 202 said "duplicate" (already counted by an earlier try)
    dedup_misses: int = 0  # deliberate re-sends of an accepted id NOT answered "duplicate"
    tries: list[tuple[float, float]] = field(default_factory=list)  # wall-clock (sent, answered) per attempt

    @property
    def accepted(self) -> bool:
        return self.fingerprint is not None


@dataclass
class Request:
    start: float  # time.monotonic()
    latency: float
    status: int


class ChaosLoad:
    def __init__(self, url: str, key: str, clients: int = 100, think: float = 0.1, templates: int = 300,
                 resend_share: float = 0.03, timeout: float = 10.0, seed: int | None = None) -> None:
        self.url = url.rstrip("/") + "/errors/log"
        self.key = key
        self.clients = clients
        self.think = think
        self.templates = templates
        self.resend_share = resend_share
        self.timeout = timeout
        self.rng = random.Random(seed)
        self.run_id = uuid.uuid4().hex[:6]
        self.events: dict[str, EventRecord] = {}
        self.requests: list[Request] = []
        self.accepted_ids: list[str] = []
        self.answers: Counter[str] = Counter()  # "503 unavailable", "transport ServerDisconnectedError", ...
        self._stop = threading.Event()  # no new events after this; re-sends go on until settled
        self._settle_deadline = 0.0
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True, name="chaos-load")

    # --- control, from the harness thread --------------------------------------------------------------
    def start(self) -> ChaosLoad:
        self._thread.start()
        return self

    def settle(self, timeout: float = 45.0) -> None:
        """Stop new events; keep re-sending the undecided ones until each has an answer or `timeout`."""
        self._settle_deadline = time.monotonic() + timeout
        self._stop.set()
        self._thread.join(timeout + self.timeout + 10)

    def body(self, event_id: str, template: int, service: str | None = None) -> bytes:
        return orjson.dumps({"event_id": event_id, "service": service or f"chaos-{template % 7}", "level": "error",
                             "message": f"ChaosError: template {template} of run {self.run_id}"})

    def post_one(self, body: bytes, event_id: str, template: int) -> None:
        """Register an event the harness sends itself (e.g. a poison row) so it is accounted like the rest."""
        self.events[event_id] = EventRecord(template)
        asyncio.run(self._post_once(body, event_id))

    async def _post_once(self, body: bytes, event_id: str) -> None:
        async with self._session() as session:
            await self._send(session, event_id, body, deliberate_resend=False)

    # --- the clients -------------------------------------------------------------------------------------
    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                     timeout=aiohttp.ClientTimeout(total=self.timeout),
                                     headers={"X-Faultline-Key": self.key, "Content-Type": "application/json"})

    async def _main(self) -> None:
        await asyncio.gather(*(self._client(i) for i in range(self.clients)))

    async def _client(self, index: int) -> None:
        rng = random.Random(self.rng.random() + index)
        retries: deque[tuple[float, str, bytes]] = deque()
        await asyncio.sleep(rng.random() * self.think)  # spread the first posts
        async with self._session() as session:
            while True:
                now = time.monotonic()
                stopping = self._stop.is_set()
                if stopping and (not retries or now > self._settle_deadline):
                    return
                if retries and retries[0][0] <= now:
                    _, event_id, body = retries.popleft()
                    deliberate = False
                elif stopping:
                    await asyncio.sleep(min(0.2, max(0.0, retries[0][0] - now)))
                    continue
                elif self.accepted_ids and rng.random() < self.resend_share:
                    event_id = rng.choice(self.accepted_ids)
                    body = self.body(event_id, self.events[event_id].template)
                    deliberate = True
                else:
                    template = min(int(rng.paretovariate(1.2)) - 1, self.templates - 1)
                    event_id = uuid.uuid4().hex
                    self.events[event_id] = EventRecord(template)
                    body = self.body(event_id, template)
                    deliberate = False
                status, retry_after = await self._send(session, event_id, body, deliberate)
                record = self.events[event_id]
                if not record.accepted and (status in REFUSED or ambiguous(status)) \
                        and len(record.statuses) < MAX_ATTEMPTS:
                    retries.append((time.monotonic() + retry_after, event_id, body))
                await asyncio.sleep(self.think)

    async def _send(self, session: aiohttp.ClientSession, event_id: str, body: bytes,
                    deliberate_resend: bool) -> tuple[int, float]:
        record = self.events[event_id]
        start, sent = time.monotonic(), time.time()
        retry_after = 0.5
        try:
            async with session.post(self.url, data=body) as resp:
                status = resp.status
                raw = await resp.read()
                if status in REFUSED:
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            status, raw = TRANSPORT, b""
            self.answers[f"transport {type(exc).__name__}"] += 1
        self.requests.append(Request(start, time.monotonic() - start, status))
        record.statuses.append(status)
        record.tries.append((sent, time.time()))
        if status not in (202, TRANSPORT):
            self.answers[f"{status} {_error_code(raw)}"] += 1
        if status == 202:
            answer = orjson.loads(raw)
            duplicate = bool(answer.get("duplicate"))
            if deliberate_resend and not duplicate:
                record.dedup_misses += 1
            if not record.accepted:
                record.fingerprint = str(answer["fingerprint"])
                record.duplicate_first_202 = duplicate
                self.accepted_ids.append(event_id)
        return status, retry_after


def _retry_after(value: str | None) -> float:
    """Honour Retry-After, but re-send within 2 s so a run of a minute still settles every event."""
    try:
        return min(2.0, max(0.2, float(value or 0.5)))
    except ValueError:
        return 0.5


def _error_code(raw: bytes) -> str:
    """The `error` field of our JSON error bodies; nginx's own pages say which upstream failure it was."""
    try:
        return str(orjson.loads(raw).get("error", "?"))
    except (orjson.JSONDecodeError, AttributeError):
        return "non-JSON body"
