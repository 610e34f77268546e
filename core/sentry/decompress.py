"""Content-Encoding: gzip, deflate (zlib-wrapped or raw), br, zstd, identity -- with a hard output cap.

Output is produced in bounded steps (zlib `max_length`, brotli `output_buffer_limit`, a zstd stream reader)
and the step that passes the cap raises at once: a bomb (1 GB of zeros in 1 MB of gzip, or in a few KB of
brotli) costs at most `limit` bytes of memory and the CPU to produce them, never the whole expansion.
"""

from __future__ import annotations

import zlib

import brotli
import zstandard

STEP = 1 << 20  # output produced per step: small enough to cut a bomb early, big enough to be cheap
# zstd frames may ask for a window of up to 2 GB of memory; an 8 MB window is zstd's level-19 default.
ZSTD_MAX_WINDOW = 1 << 23
ENCODINGS = ("gzip", "x-gzip", "deflate", "br", "zstd", "identity", "")


class DecodeError(Exception):
    """The body is not valid for its Content-Encoding (400), or the encoding is unknown (415)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"decompressed body exceeds the limit of {limit} bytes")
        self.limit = limit


def decompress(data: bytes, encoding: str | None, limit: int) -> bytes:
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity"):
        if len(data) > limit:
            raise TooLarge(limit)
        return data
    if enc in ("gzip", "x-gzip"):
        return _zlib(data, 16 + zlib.MAX_WBITS, limit)
    if enc == "deflate":
        # RFC 9110 says zlib-wrapped; some clients send raw deflate. A zlib header is 2 bytes with
        # CM=8 whose big-endian value is a multiple of 31 - raw deflate data rarely looks like that.
        wrapped = len(data) >= 2 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0
        return _zlib(data, zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS, limit)
    if enc == "br":
        return _brotli(data, limit)
    if enc == "zstd":
        return _zstd(data, limit)
    raise DecodeError(415, "unsupported_encoding", f"Content-Encoding {enc[:32]!r} is not supported; "
                      "use gzip, deflate, br, zstd or none")


def _grow(out: bytearray, chunk: bytes, limit: int) -> None:
    out += chunk
    if len(out) > limit:
        raise TooLarge(limit)


def _zlib(data: bytes, wbits: int, limit: int) -> bytes:
    d = zlib.decompressobj(wbits)
    out = bytearray()
    pending = data
    try:
        while True:
            _grow(out, d.decompress(pending, min(STEP, limit - len(out) + 1)), limit)
            pending = d.unconsumed_tail
            if not pending or d.eof:
                break
        if not d.eof:
            _grow(out, d.flush(), limit)
    except zlib.error as exc:
        raise DecodeError(400, "invalid_compression", f"body is not valid {_name(wbits)}: {exc}") from None
    if not d.eof:
        raise DecodeError(400, "truncated_compression", f"the {_name(wbits)} stream ends early")
    return bytes(out)


def _name(wbits: int) -> str:
    return "gzip" if wbits > zlib.MAX_WBITS else "deflate"


def _brotli(data: bytes, limit: int) -> bytes:
    d = brotli.Decompressor()
    out = bytearray()
    try:
        _grow(out, d.process(data, output_buffer_limit=min(STEP, limit - len(out) + 1)), limit)
        while not d.is_finished() and not d.can_accept_more_data():
            _grow(out, d.process(b"", output_buffer_limit=min(STEP, limit - len(out) + 1)), limit)
    except brotli.error as exc:
        raise DecodeError(400, "invalid_compression", f"body is not valid brotli: {exc}") from None
    if not d.is_finished():
        raise DecodeError(400, "truncated_compression", "the brotli stream ends early")
    return bytes(out)


def _zstd(data: bytes, limit: int) -> bytes:
    out = bytearray()
    try:
        reader = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(data)
        while chunk := reader.read(min(STEP, limit - len(out) + 1)):
            _grow(out, chunk, limit)
    except zstandard.ZstdError as exc:
        raise DecodeError(400, "invalid_compression", f"body is not valid zstd: {exc}") from None
    return bytes(out)
