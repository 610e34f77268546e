"""Run by tests/e2e/test_sentry_ratelimit.py: the real sentry-sdk against a Faultline whose limiter allows
3 envelopes per window. Prints one JSON line with what the SDK's transport did."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime

import sentry_sdk

sent_ok: list[str] = []
lost: list[str] = []


def main() -> None:
    sentry_sdk.init(dsn=sys.argv[1], default_integrations=False, send_client_reports=False)
    transport = sentry_sdk.get_client().transport
    original = transport.record_lost_event  # type: ignore[union-attr]

    def record_lost_event(reason, data_category=None, item=None, *, quantity=1):  # type: ignore[no-untyped-def]
        lost.append(f"{reason}:{data_category}")
        return original(reason, data_category, item, quantity=quantity)

    transport.record_lost_event = record_lost_event  # type: ignore[union-attr,method-assign]
    for i in range(4):  # the 4th gets our 429
        sentry_sdk.capture_message(f"rate limited probe {i}")
        sentry_sdk.flush(timeout=10)
    limited_at = datetime.now(UTC)
    disabled = {str(k): (v - limited_at).total_seconds() for k, v in transport._disabled_until.items()}  # type: ignore[union-attr]
    was_limited = transport._is_rate_limited()  # type: ignore[union-attr]
    for i in range(5):  # inside the window: dropped by the SDK itself, never sent
        sentry_sdk.capture_message(f"rate limited probe {10 + i}")
    sentry_sdk.flush(timeout=10)
    lost_in_window = list(lost)
    time.sleep(max(disabled.values(), default=0) + 0.5)
    still_limited = transport._is_rate_limited()  # type: ignore[union-attr]
    sentry_sdk.capture_message("rate limited probe 99")
    sentry_sdk.flush(timeout=10)
    print(json.dumps({"disabled_for": disabled, "was_limited": was_limited, "still_limited": still_limited,
                      "lost_in_window": lost_in_window, "lost": lost}), flush=True)


if __name__ == "__main__":
    main()
