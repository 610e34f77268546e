"""Trusted proxy networks (FAULTLINE_TRUSTED_PROXIES), parsed and validated at start-up."""

from __future__ import annotations

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_cidrs(value: str, setting: str = "FAULTLINE_TRUSTED_PROXIES") -> tuple[Network, ...]:
    nets = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{setting}: {part!r} is not an IP address or CIDR (e.g. 10.0.0.0/8)") from None
    return tuple(nets)
