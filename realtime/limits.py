"""Socket.IO limits per client IP: connection attempts, bad-token connects, events; refusals logged in summary.

In-process windows (core/ratelimit/limiter.MemoryLimiter): refusing a flood must cost no I/O, so these are
per process (a client gets the limit once per API process; the nginx edge bounds the total per IP).
- Every /socket.io/ request passes `admit_connect` BEFORE engine.io sees it (SocketIORoute): over the
  connect window, or with a full bad-token window, it is refused at the door (websocket close before
  accept = HTTP 403; polling = 429 JSON) without a handshake, a session or a log line.
- A connect with a missing or wrong token fills the IP's bad-token window (`bad_token`).
- Events (subscribe, unsubscribe, anything else) pass `admit_event`: over the window the client gets an
  error answer at once; nothing is read from Redis.
Refusals are logged by RefusalLog: the first one of a quiet period at once, the rest as ONE line per
interval with counts, so a flood of 10,000 bad tokens is 1 + 1 line per 10 s, not 10,000.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from core.ratelimit.limiter import MemoryLimiter
from core.ratelimit.tiers import parse_tier
from core.settings import Settings

log = logging.getLogger("faultline.realtime")
# peer, X-Forwarded-For, X-Real-IP -> client label (api/clientip.ClientIp.resolve, injected by faultline/)
ResolveIp = Callable[[str | None, bytes | None, bytes | None], str]
MAX_TRACKED = 1000  # distinct IPs counted per log interval; more are summed under "others"


def _peer_only(peer: str | None, _xff: bytes | None, _xri: bytes | None) -> str:
    return peer or "unknown"


class HandshakeLogFilter(logging.Filter):
    """uvicorn (and the websockets library, on the same logger) log every websocket handshake at INFO on
    "uvicorn.error" ('"WebSocket /socket.io/..." 403', '[accepted]', 'connection rejected (403 Forbidden)',
    'connection open', 'connection closed'): one line or more per attempt of a flood. Our own lines cover
    sockets (one per connect, connects are limited) and refusals (summed up), so drop those."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        return not (isinstance(msg, str) and (msg.startswith(('%s - "WebSocket %s"', "connection rejected ("))
                                              or msg in ("connection open", "connection closed")))


def quiet_handshake_logs() -> None:
    target = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, HandshakeLogFilter) for f in target.filters):
        target.addFilter(HandshakeLogFilter())


class RefusalLog:
    def __init__(self, interval: float, logger: logging.Logger = log) -> None:
        self.interval = interval
        self.logger = logger
        self.reasons: Counter[str] = Counter()
        self.clients: Counter[str] = Counter()
        self.pending = 0
        self.quiet_until = 0.0
        self.total = 0  # every refusal ever (for tests and metrics)

    def note(self, reason: str, client: str) -> None:
        self.total += 1
        now = time.monotonic()
        if now >= self.quiet_until and not self.pending:
            self.logger.warning("socket refused from %s: %s (more refusals are summed up every %.0f s)",
                                client, reason, self.interval)
            self.quiet_until = now + self.interval
            return
        if not self.pending:
            asyncio.get_running_loop().call_later(max(self.quiet_until - now, 0.0), self.flush)
        self.pending += 1
        self.reasons[reason] += 1
        if client in self.clients or len(self.clients) < MAX_TRACKED:
            self.clients[client] += 1
        else:
            self.clients["others"] += 1

    def flush(self) -> None:
        if not self.pending:
            return
        top = ", ".join(f"{c} ({n})" for c, n in self.clients.most_common(3))
        reasons = ", ".join(f"{r} {n}" for r, n in self.reasons.most_common())
        self.logger.warning("socket refusals in the last %.0f s: %d (%s) from %d clients, most from %s",
                            self.interval, self.pending, reasons, len(self.clients), top)
        self.pending = 0
        self.reasons.clear()
        self.clients.clear()
        self.quiet_until = time.monotonic() + self.interval


class SocketLimits:
    def __init__(self, settings: Settings, resolve_ip: ResolveIp | None = None) -> None:
        self.resolve_ip = resolve_ip or _peer_only
        self.connect_tier = parse_tier(f"connect:{settings.socket_connect_limit}")
        self.bad_tier = parse_tier(f"bad_token:{settings.socket_bad_token_limit}")
        self.event_tier = parse_tier(f"event:{settings.socket_event_limit}")
        self.windows = MemoryLimiter()
        self.refusals = RefusalLog(settings.socket_log_interval)
        quiet_handshake_logs()

    def client_of(self, scope: dict[str, Any]) -> str:
        forwarded = real_ip = None
        for name, value in scope.get("headers", ()):
            if name == b"x-forwarded-for":
                forwarded = value if forwarded is None else forwarded + b"," + value
            elif name == b"x-real-ip":
                real_ip = value
        peer = scope.get("client")
        return self.resolve_ip(peer[0] if peer else None, forwarded, real_ip)

    async def admit_connect(self, client: str) -> int:
        """0 = let the handshake through; else seconds until this client may try again."""
        wait = self.windows.wait_us(client, self.bad_tier)
        reason = "too many bad tokens"
        if not wait:
            decision = await self.windows.hit(client, (self.connect_tier,))
            wait = 0 if decision.allowed else decision.wait_us
            reason = "too many connects"
        if wait:
            self.refusals.note(reason, client)
            return max(1, -(-wait // 1_000_000))
        return 0

    async def bad_token(self, client: str, reason: str) -> None:
        await self.windows.hit(client, (self.bad_tier,))
        self.refusals.note(reason, client)

    async def admit_event(self, client: str) -> int:
        decision = await self.windows.hit(client, (self.event_tier,))
        if decision.allowed:
            return 0
        self.refusals.note("too many events", client)
        return max(1, decision.retry_after_s)
