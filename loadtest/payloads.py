"""The traffic mix every load generator sends: a few hot groups, a long tail, some repeated event ids.

Shares are shaped like a real service's errors: 60 % of events come from 5 hot bugs, 30 % from 50 warm
ones, 10 % from a tail of 20,000 rare ones (most seen once or twice in a short run). 2 % of posts re-send a
recent event id, as an SDK does when its first attempt timed out: accepted, never counted twice.
"""

from __future__ import annotations

import random
import uuid
from collections import deque
from dataclasses import dataclass, field

import orjson

HOT, WARM, TAIL = 5, 50, 20_000
HOT_SHARE, WARM_SHARE = 0.60, 0.30
REPEAT_SHARE = 0.02
SERVICES = ("checkout", "payments", "search", "auth", "mailer")
ERRORS = ("TimeoutError: upstream timed out after 30s", "KeyError: 'user_id'",
          "ValueError: invalid literal for int() with base 10", "ConnectionResetError: peer reset",
          "TypeError: 'NoneType' object is not subscriptable")


def group_name(rng: random.Random) -> str:
    r = rng.random()
    if r < HOT_SHARE:
        return f"hot-{rng.randrange(HOT)}"
    if r < HOT_SHARE + WARM_SHARE:
        return f"warm-{rng.randrange(WARM)}"
    return f"tail-{rng.randrange(TAIL)}"


@dataclass
class PayloadMix:
    seed: int | None = None
    rng: random.Random = field(init=False)
    recent: deque[dict[str, object]] = field(default_factory=lambda: deque(maxlen=256))
    last_was_repeat: bool = False  # the last event() re-sent an earlier event (a deliberate duplicate)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def event(self) -> dict[str, object]:
        self.last_was_repeat = bool(self.recent) and self.rng.random() < REPEAT_SHARE
        if self.last_was_repeat:
            return self.rng.choice(self.recent)  # a client retry: the same event, sent again
        group = group_name(self.rng)
        n = int(group.rsplit("-", 1)[1])
        event: dict[str, object] = {
            "message": f"{ERRORS[n % len(ERRORS)]} ({group})",
            "service": SERVICES[n % len(SERVICES)],
            "level": "error" if n % 7 else "fatal",
            "stack": f'File "app/{group}.py", line {10 + n % 90}, in handler\n  raise',
            "context": {"request_id": self.rng.getrandbits(32), "path": f"/api/{group}"},
            "fingerprint": group,
            "event_id": uuid.UUID(int=self.rng.getrandbits(128)).hex,
        }
        self.recent.append(event)
        return event

    def body(self) -> bytes:
        return orjson.dumps(self.event())

    def batch_body(self, size: int) -> bytes:
        return orjson.dumps({"events": [self.event() for _ in range(size)]})
