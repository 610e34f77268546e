"""Run by tests/e2e/test_sentry_sdks.py in its own process: the real sentry-sdk, DSN from argv[1].

Prints one JSON line: the event ids the SDK sent and every event the transport recorded as lost.
"""

from __future__ import annotations

import json
import sys

import sentry_sdk

sent: list[str] = []
lost: list[str] = []


def before_send(event, hint):  # type: ignore[no-untyped-def]
    sent.append(event["event_id"])
    return event


def work(kind: str, n: int) -> object:
    """Three bugs, each raised from two different lines of this one function, with different data."""
    data: dict[str, object] = {"n": n}
    if kind == "key":
        if n % 2:
            return data[f"missing-{n}"]
        return data[f"other-{n * 7}"]
    if kind == "zero":
        if n % 2:
            return n / 0
        return n // (n - n)
    if n % 2:
        return data + n  # type: ignore[operator]
    return len(n)  # type: ignore[arg-type]


def save(order: int) -> None:
    try:
        raise ConnectionError(f"db down while saving order {order}")
    except ConnectionError as exc:
        raise RuntimeError(f"could not save order {order}") from exc


def main() -> None:
    sentry_sdk.init(dsn=sys.argv[1], before_send=before_send, send_client_reports=True, traces_sample_rate=0,
                    transport_queue_size=1000, default_integrations=False, release="py-e2e@1")
    transport = sentry_sdk.get_client().transport
    assert transport is not None
    original = transport.record_lost_event

    def record_lost_event(reason, data_category=None, item=None, *, quantity=1):  # type: ignore[no-untyped-def]
        lost.append(f"{reason}:{data_category}:{quantity}")
        return original(reason, data_category, item, quantity=quantity)

    transport.record_lost_event = record_lost_event  # type: ignore[method-assign]
    for kind in ("key", "zero", "type"):
        for n in range(20):
            try:
                work(kind, n)
            except Exception as exc:
                sentry_sdk.capture_exception(exc)
    for i in range(5):
        sentry_sdk.capture_message(f"checkout slow for cart {i * 31}", level="warning")
    for order in range(3):
        try:
            save(order)
        except RuntimeError as exc:
            sentry_sdk.capture_exception(exc)
    for i, err in enumerate([ValueError("a"), KeyError("b"), OSError("c"), TypeError("d")]):
        with sentry_sdk.new_scope() as scope:
            scope.fingerprint = ["payment-gateway"]
            scope.set_tag("attempt", str(i))
            try:
                raise err
            except Exception as exc:
                sentry_sdk.capture_exception(exc)
    sentry_sdk.flush(timeout=30)
    print(json.dumps({"sent": sent, "lost": lost}), flush=True)


if __name__ == "__main__":
    main()
