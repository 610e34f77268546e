"""Where a webhook may point: http(s) only, and (unless FAULTLINE_ALERT_ALLOW_PRIVATE_URLS) never to a loopback,
link-local, private, shared or reserved address — the workers post from inside the network (core/settings.py
says why). Checked when a rule is created (a clear 422) and at every connection: `SafeResolver` filters the
addresses aiohttp connects to, so a name that resolves elsewhere later (DNS rebinding) is refused too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

MAX_URL = 2048


class UnsafeUrl(OSError):
    """The URL is malformed or leads to an address webhooks may not reach. An OSError, so aiohttp reports a
    refusal from the resolver as a connection error naming it."""


def address_allowed(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def parse(url: str) -> tuple[str, str]:
    """(scheme, host) of a webhook URL, or UnsafeUrl with the reason."""
    if len(url) > MAX_URL:
        raise UnsafeUrl(f"the URL is longer than {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise UnsafeUrl(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl("the URL must start with http:// or https://")
    if not parts.hostname:
        raise UnsafeUrl("the URL has no host")
    if parts.username or parts.password:
        raise UnsafeUrl("credentials in the URL are not allowed (put a token in the path)")
    return parts.scheme, parts.hostname


async def check_url(url: str, allow_private: bool) -> None:
    """Refuse a URL that is malformed or (unless allowed) resolves to a non-public address."""
    _, host = parse(url)
    if allow_private:
        return
    literal = _literal(host)
    if literal is not None:
        ips = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise UnsafeUrl(f"{host} does not resolve: {exc}") from None
        ips = [str(info[4][0]) for info in infos]
    refused = [ip for ip in ips if not address_allowed(ip)]
    if refused:
        raise UnsafeUrl(f"{host} is a loopback, link-local, private or reserved address ({refused[0]}); "
                        "set FAULTLINE_ALERT_ALLOW_PRIVATE_URLS=true if your receivers are internal")


class SafeResolver(AbstractResolver):
    """aiohttp's resolver minus the addresses webhooks may not reach. IP literals never reach a resolver:
    `check_url` refuses them before each request."""

    def __init__(self, allow_private: bool) -> None:
        self.inner = ThreadedResolver()
        self.allow_private = allow_private

    async def resolve(self, host: str, port: int = 0, family: Any = socket.AF_INET) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        if self.allow_private:
            return found
        allowed = [r for r in found if address_allowed(r["host"])]
        if not allowed:
            raise UnsafeUrl(f"{host} resolves only to addresses webhooks may not reach")
        return allowed

    async def close(self) -> None:
        await self.inner.close()
