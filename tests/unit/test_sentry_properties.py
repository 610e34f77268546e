"""Property tests (hypothesis) for core/sentry: envelopes round-trip whatever the items, every encoding
round-trips and obeys its cap, and in-app grouping ignores line numbers and exception values."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import brotli
import orjson
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from core.sentry.decompress import TooLarge, decompress
from core.sentry.envelope import parse_envelope
from core.sentry.normalize import to_log_error

item_types = st.sampled_from(["event", "session", "attachment", "client_report", "x-unknown"])
items = st.lists(st.tuples(item_types, st.binary(max_size=300), st.booleans()), max_size=8)


@settings(max_examples=100, deadline=None)
@given(items)
def test_envelopes_round_trip(generated: list[tuple[str, bytes, bool]]) -> None:
    lines = [orjson.dumps({"event_id": "f" * 32})]
    expected = []
    for kind, payload, with_length in generated:
        if not with_length:
            payload = payload.replace(b"\n", b" ")  # without `length` a payload ends at the newline
        header: dict[str, Any] = {"type": kind, **({"length": len(payload)} if with_length else {})}
        lines += [orjson.dumps(header), payload]
        expected.append((kind, payload))
    _, parsed = parse_envelope(b"\n".join(lines) + b"\n", 10_000)
    assert [(i.type, i.payload) for i in parsed] == expected


ENCODERS = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress,
            "zstd": zstandard.ZstdCompressor().compress, "identity": bytes}


@pytest.mark.parametrize("encoding", list(ENCODERS))
@settings(max_examples=25, deadline=None)
@given(raw=st.binary(min_size=1, max_size=5000))
def test_every_encoding_round_trips_and_caps(encoding: str, raw: bytes) -> None:
    data = ENCODERS[encoding](raw)
    assert decompress(data, encoding, len(raw)) == raw
    with pytest.raises(TooLarge):
        decompress(data, encoding, len(raw) - 1)


frames = st.lists(st.tuples(st.sampled_from(["app.a", "app.b", "lib.c"]), st.sampled_from(["f", "g", "h"]),
                            st.booleans()), min_size=1, max_size=6)


@settings(max_examples=100, deadline=None)
@given(frames, st.lists(st.integers(1, 10_000), min_size=6, max_size=6), st.text(max_size=40), st.text(max_size=40))
def test_in_app_grouping_ignores_lines_and_values(shape: list[tuple[str, str, bool]], lines: list[int],
                                                  value_a: str, value_b: str) -> None:
    def event(value: str, line_of: Any) -> dict[str, Any]:
        stack = [{"module": m, "function": f, "in_app": in_app, "lineno": line_of(i)}
                 for i, (m, f, in_app) in enumerate(shape)]
        return {"exception": {"values": [{"type": "BugError", "value": value, "stacktrace": {"frames": stack}}]}}

    a = to_log_error(event(value_a, lambda i: i)).fingerprint
    b = to_log_error(event(value_b, lambda i: lines[i])).fingerprint
    if any(in_app for *_, in_app in shape):
        assert a == b
