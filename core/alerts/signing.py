"""Webhook signatures: `X-Faultline-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.

The key is the rule's secret (shown once, when the rule is created). Signing the timestamp with the body lets
a receiver refuse replays: `verify` accepts a signature only within REPLAY_WINDOW seconds of its timestamp,
either way (clocks drift). A receiver that also wants exactly-once keeps the `X-Faultline-Delivery` ids it has
seen for that window: a delivery retried after a lost answer carries the same id.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

HEADER = "X-Faultline-Signature"
DELIVERY_HEADER = "X-Faultline-Delivery"
# 5 min: as Stripe and Slack do; wide enough for clock drift and a slow proxy, short enough that a captured
# request cannot be replayed later.
REPLAY_WINDOW = 300


def new_secret() -> str:
    return "whsec_" + secrets.token_hex(24)


def signature(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def sign(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The header to send with `body`, timestamped now."""
    return {HEADER: signature(secret, body, int(time.time() if now is None else now))}


def verify(secret: str, header: str | None, body: bytes, now: float | None = None,
           tolerance: float = REPLAY_WINDOW) -> bool:
    """True if `header` signs exactly `body` with `secret`, timestamped within `tolerance` s of now."""
    if not header:
        return False
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(name, []).append(value)
    stamps = fields.get("t", [])
    if len(stamps) != 1 or not stamps[0].isdigit():
        return False
    timestamp = int(stamps[0])
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = signature(secret, body, timestamp).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, v) for v in fields.get("v1", []))
