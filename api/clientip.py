"""Who the client is: the socket peer, unless the peer is a trusted proxy that names someone else.

X-Forwarded-For is read from the right: each trusted proxy appended the address it saw, so the first
address from the right that is not a trusted proxy is the client. Anything left of it, and any header from
an untrusted peer, was written by the client and is ignored: a spoofed header cannot pick someone else's
rate-limit window. Garbage stops the walk (only a client writes garbage). IPv6 clients are keyed by their
/64: one host usually owns a whole /64 and could otherwise rotate through 2^64 windows.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from core.ratelimit.proxies import Network, parse_cidrs

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_HOPS = 16  # a longer chain is a client padding the header; read no further


@lru_cache(maxsize=4096)
def parse_ip(text: str) -> Address | None:
    """Cached: every limited or ingest request parses its peer (and forwarded hops), ~1 % of an API process's
    CPU under `make bench` (py-spy); the addresses seen are few, and the cache is bounded."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_label(ip: Address) -> str:
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False).network_address) + "/64"
    return str(ip)


class ClientIp:
    def __init__(self, trusted: str | tuple[Network, ...]) -> None:
        self.networks = parse_cidrs(trusted) if isinstance(trusted, str) else trusted
        # The set of peers is small (the proxies, a few direct clients); 4,096 entries bound the memory.
        self.is_trusted = lru_cache(maxsize=4096)(self._is_trusted)

    def _is_trusted(self, ip: Address) -> bool:
        return any(ip in net for net in self.networks)

    def peer_trusted(self, peer: str | None) -> bool:
        """Is the socket peer one of our proxies (whose headers, e.g. X-Edge-Request-ID, we believe)?"""
        ip = parse_ip(peer) if peer else None
        return ip is not None and bool(self.networks) and self.is_trusted(ip)

    def resolve(self, peer: str | None, forwarded_for: bytes | None, real_ip: bytes | None) -> str:
        """A label for the client: an IPv4 address, an IPv6 /64, or "unknown" without a peer."""
        peer_ip = parse_ip(peer) if peer else None
        if peer_ip is None:
            return "unknown"
        if not self.networks or not self.is_trusted(peer_ip):
            return client_label(peer_ip)
        if forwarded_for:
            hop = peer_ip
            for part in reversed(forwarded_for.decode("latin-1").split(",")[-MAX_HOPS:]):
                ip = parse_ip(part)
                if ip is None:
                    break
                hop = ip
                if not self.is_trusted(ip):
                    break
            return client_label(hop)
        if real_ip:
            ip = parse_ip(real_ip.decode("latin-1"))
            if ip is not None:
                return client_label(ip)
        return client_label(peer_ip)


@lru_cache(maxsize=8)
def for_proxies(trusted: str) -> ClientIp:
    """One ClientIp per trusted-proxy setting, shared by the routes of a process."""
    return ClientIp(trusted)
