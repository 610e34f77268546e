"""core/sentry: auth + DSN, decompression limits, envelope parsing. Pure functions, no servers."""

from __future__ import annotations

import gzip
import zlib

import brotli
import orjson
import pytest
import zstandard

from core.sentry.auth import AuthError, agreed_key, dsn_for, key_from_auth_header, parse_dsn
from core.sentry.decompress import DecodeError, TooLarge, decompress
from core.sentry.envelope import EnvelopeError, event_payload, parse_envelope

RAW = b'{"message": "hello"}\n' * 500
ENCODED = {
    "gzip": gzip.compress(RAW),
    "deflate": zlib.compress(RAW),
    "deflate-raw": zlib.compress(RAW)[2:-4],  # zlib header and adler32 stripped: raw deflate
    "br": brotli.compress(RAW),
    "zstd": zstandard.ZstdCompressor().compress(RAW),
    "identity": RAW,
}


def test_auth_header_forms() -> None:
    assert key_from_auth_header("Sentry sentry_key=abc, sentry_version=7, sentry_client=x/1") == "abc"
    assert key_from_auth_header("sentry sentry_version=7,sentry_key= k2 ") == "k2"
    assert key_from_auth_header("Bearer abc") is None
    assert key_from_auth_header("Sentry sentry_version=7") is None
    assert key_from_auth_header(None) is None


def test_dsn_round_trip_and_agreement() -> None:
    dsn = dsn_for("http://127.0.0.1:8080/", "k-1_x", 42)
    assert dsn == "http://k-1_x@127.0.0.1:8080/42"
    assert parse_dsn(dsn) == ("k-1_x", "42")
    assert parse_dsn(dsn_for("https://errors.example.com/sentry", "key", 7)) == ("key", "7")
    assert dsn_for("https://errors.example.com/sentry", "key", 7) == "https://key@errors.example.com/sentry/7"
    assert parse_dsn("not a dsn") == (None, None)
    assert agreed_key([None, "k", "k"]) == "k"
    with pytest.raises(AuthError) as missing:
        agreed_key([None, None])
    assert missing.value.status == 401
    with pytest.raises(AuthError) as conflict:
        agreed_key(["secret-a", "secret-b"])
    assert conflict.value.code == "conflicting_keys" and "secret" not in conflict.value.message


@pytest.mark.parametrize("name", list(ENCODED))
def test_every_encoding_decodes_and_obeys_the_cap(name: str) -> None:
    encoding = name.removesuffix("-raw")
    assert decompress(ENCODED[name], encoding, len(RAW)) == RAW
    with pytest.raises(TooLarge):
        decompress(ENCODED[name], encoding, len(RAW) - 1)


@pytest.mark.parametrize("name", ["gzip", "deflate", "deflate-raw", "br"])
def test_truncated_or_corrupt_compressed_bodies_are_400(name: str) -> None:
    data = ENCODED[name]
    with pytest.raises(DecodeError) as truncated:
        decompress(data[: len(data) // 2], name.removesuffix("-raw"), 10**6)
    assert truncated.value.status == 400
    with pytest.raises(DecodeError):
        decompress(b"\x00garbage" * 10, name.removesuffix("-raw"), 10**6)


def test_unknown_encoding_is_415() -> None:
    with pytest.raises(DecodeError) as exc:
        decompress(b"x", "lzma", 10)
    assert exc.value.status == 415


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
def test_a_bomb_is_cut_at_the_cap(encoding: str) -> None:
    zeros = b"\0" * (16 << 20)
    bomb = {"gzip": lambda: gzip.compress(zeros, 6), "br": lambda: brotli.compress(zeros),
            "zstd": lambda: zstandard.ZstdCompressor().compress(zeros)}[encoding]()
    assert len(bomb) < (64 << 10)
    with pytest.raises(TooLarge):
        decompress(bomb, encoding, 1 << 20)


def _envelope(*items: tuple[dict[str, object], bytes], header: dict[str, object] | None = None) -> bytes:
    parts = [orjson.dumps(header or {"event_id": "a" * 32})]
    for h, payload in items:
        parts += [orjson.dumps(h), payload]
    return b"\n".join(parts) + b"\n"


def test_items_with_and_without_length_several_and_unknown() -> None:
    ev = orjson.dumps({"event_id": "b" * 32, "message": "x"})
    binary = b"line1\nline2\n\x00"  # an attachment with newlines in it: only `length` can delimit it
    body = _envelope(({"type": "event", "length": len(ev)}, ev), ({"type": "session"}, b'{"sid": "1"}'),
                     ({"type": "attachment", "length": len(binary)}, binary), ({"type": "future_thing"}, b"{}"))
    header, items = parse_envelope(body, 1000)
    assert header["event_id"] == "a" * 32
    assert [(i.type, i.payload) for i in items] == [("event", ev), ("session", b'{"sid": "1"}'),
                                                     ("attachment", binary), ("future_thing", b"{}")]
    assert event_payload(items[0], 0)["message"] == "x"
    # Last item without a trailing newline, and an empty payload with length 0.
    header, items = parse_envelope(b'{}\n{"type":"client_report","length":0}\n\n{"type":"event"}\n{"a":1}', 100)
    assert [(i.type, i.payload) for i in items] == [("client_report", b""), ("event", b'{"a":1}')]


@pytest.mark.parametrize(("body", "status", "code"), [
    (b'{"event_id":\n', 400, "invalid_envelope"),                                     # bad envelope header
    (b'{}\n{"type":"event","length":100}\n{"short":1}\n', 400, "truncated_envelope"),  # length past the end
    (b'{}\n{"type":"event","length":3}\n{"a":1}\n', 400, "invalid_envelope"),          # length too short
    (b'{}\n{"type":"event","length":-1}\n{}\n', 400, "invalid_envelope"),
    (b'{}\n{"length":2}\n{}\n', 400, "invalid_envelope"),                              # no type
    (b'{}\nnot json\n{}\n', 400, "invalid_envelope"),
    (b'{}\n{"type":"event"}\n' + b'{"m":"' + b"x" * 2000 + b'"}\n', 413, "item_too_large"),
])
def test_malformed_envelopes(body: bytes, status: int, code: str) -> None:
    with pytest.raises(EnvelopeError) as exc:
        parse_envelope(body, 1000)
    assert (exc.value.status, exc.value.code) == (status, code)


def test_invalid_json_in_an_event_item_is_400() -> None:
    _, items = parse_envelope(b'{}\n{"type":"event"}\n{"broken": \n', 1000)
    with pytest.raises(EnvelopeError) as exc:
        event_payload(items[0], 0)
    assert exc.value.status == 400 and exc.value.code == "invalid_item"


def test_rate_limits_header_only_on_sentry_routes_and_in_whole_seconds() -> None:
    from core.sentry.ratelimits import rate_limits_header

    assert rate_limits_header("/api/3/envelope/", 2.2) == "3::key"
    assert rate_limits_header("/api/3/store/", 0.01, "error;default", reason="quota") == "1:error;default:key:quota"
    assert rate_limits_header("/errors/log", 5) is None
    assert rate_limits_header("/api/projects", 5) is None
