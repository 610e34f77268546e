"""Webhook signatures and the address rules for webhook URLs."""

from __future__ import annotations

import time

import pytest

from core.alerts import payload
from core.alerts.signing import HEADER, sign, verify
from core.alerts.urls import UnsafeUrl, address_allowed, check_url, parse


def test_signature_verifies_only_the_same_body_secret_and_recent_time() -> None:
    body = b'{"kind":"new_group"}'
    header = sign("s3cret", body)[HEADER]
    assert verify("s3cret", header, body)
    assert not verify("other", header, body)
    assert not verify("s3cret", header, body + b" ")
    assert not verify("s3cret", None, body) and not verify("s3cret", "v1=abc", body)
    old = sign("s3cret", body, now=time.time() - 301)[HEADER]
    assert not verify("s3cret", old, body)  # outside the 5-minute replay window
    assert verify("s3cret", old, body, tolerance=400)
    t, mac = header.split(",")
    assert verify("s3cret", f"{t},v1=deadbeef,{mac}", body)  # several v1 (secret rotation): any may match


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.0.0.1", "172.16.3.4", "192.168.1.1", "169.254.169.254", "::1",
                                "fe80::1", "fc00::1", "100.64.0.1", "0.0.0.0", "224.0.0.1", "::ffff:127.0.0.1"])
def test_non_public_addresses_are_refused(ip: str) -> None:
    assert not address_allowed(ip)


def test_public_addresses_pass() -> None:
    assert address_allowed("93.184.215.14") and address_allowed("2606:4700::1111")


@pytest.mark.parametrize("url", ["ftp://example.com/", "http://", "http://user:pw@example.com/", "example.com",
                                 "http://example.com:99999/", "http://" + "a" * 3000 + ".com/"])
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        parse(url)


async def test_private_literals_refused_unless_allowed() -> None:
    with pytest.raises(UnsafeUrl, match="ALLOW_PRIVATE"):
        await check_url("http://10.0.0.5:8080/hook", allow_private=False)
    await check_url("http://10.0.0.5:8080/hook", allow_private=True)


def test_slack_payload_escapes_and_falls_back_to_text() -> None:
    class Rule:
        id, name, format, window_minutes = 1, "r", "slack", None

    alert = {"delivery_id": "d", "kind": "new_group", "project_id": 1, "fingerprint": "f", "at": 1.0, "count": None}
    import orjson

    doc = orjson.loads(payload.body(alert, Rule, {"message": "<script> & co", "service": "web"}))
    assert doc["text"].endswith("&lt;script&gt; &amp; co") and doc["blocks"][0]["type"] == "section"
