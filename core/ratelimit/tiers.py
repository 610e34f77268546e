"""Rate-limit tiers and per-route rules, parsed from settings strings and validated at start-up.

FAULTLINE_RATE_LIMITS       "short:10/s,medium:100/m,long:1000/h"   name:limit/window, window = [n]ms|s|m|h
FAULTLINE_RATE_LIMIT_ROUTES "POST /errors/batch=short:2/s; GET /errors*=off"
    METHOD (or *) and a path (a trailing * makes it a prefix), then `off` (exempt) or tiers. A route tier
    whose name is a default tier's replaces it there; it counts in its own window (a 2/s batch tier must not
    count the same client's /errors/log requests). Default tiers the route does not name stay shared.
Every error names the part that is wrong, so a bad value stops start-up with a message a human can act on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
# One day: a longer window keeps up to `limit` entries per client for that long; use a quota system instead.
MAX_WINDOW_MS = 86_400_000
MAX_TIERS = 8
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_WINDOW = re.compile(r"^(\d*)(ms|s|m|h)$")
_METHOD = re.compile(r"^(\*|[A-Z]{3,7})$")

DEFAULT_TIERS = "short:10/s,medium:100/m,long:1000/h"
# Batch ingest carries up to 1,000 events per request: 2/s (the seed's tighter tier for expensive routes).
DEFAULT_ROUTES = "POST /errors/batch=short:2/s"
# Probes and scrapes must never be refused: an orchestrator that gets 429 restarts a healthy pod.
EXEMPT_PREFIXES = ("/health/", "/metrics")


class RateLimitConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Tier:
    name: str  # reported in the 429 body ("tier")
    limit: int
    window_ms: int
    scope: str = ""  # "" = the client's shared window; else the route that owns this window

    @property
    def key(self) -> str:
        """The part of the Redis key that tells windows apart (core/keys.py adds prefix and client)."""
        return f"{self.name}@{self.scope}" if self.scope else self.name


def parse_tier(spec: str, setting: str = "FAULTLINE_RATE_LIMITS") -> Tier:
    name, sep, rest = spec.strip().partition(":")
    where = f"{setting}: tier {spec.strip()!r}"
    if not sep:
        raise RateLimitConfigError(f"{where}: expected name:limit/window, e.g. short:10/s")
    if not _NAME.match(name):
        raise RateLimitConfigError(f"{where}: name {name!r} must be lowercase letters, digits, _ or -")
    limit_s, sep, window_s = rest.partition("/")
    if not sep:
        raise RateLimitConfigError(f"{where}: missing '/window' after the limit")
    if not limit_s.isdigit() or not 0 < int(limit_s) <= 1_000_000_000:
        raise RateLimitConfigError(f"{where}: limit {limit_s!r} is not an integer from 1 to 1000000000")
    m = _WINDOW.match(window_s)
    if not m:
        raise RateLimitConfigError(f"{where}: window {window_s!r} must look like 1s, 500ms, 5m or h")
    window_ms = int(m.group(1) or 1) * UNITS_MS[m.group(2)]
    if not 0 < window_ms <= MAX_WINDOW_MS:
        raise RateLimitConfigError(f"{where}: window {window_s!r} must be between 1ms and 24h")
    return Tier(name, int(limit_s), window_ms)


def parse_tiers(value: str, setting: str = "FAULTLINE_RATE_LIMITS") -> tuple[Tier, ...]:
    specs = [s for s in value.split(",") if s.strip()]
    if not specs:
        raise RateLimitConfigError(f"{setting}: no tiers given (e.g. {DEFAULT_TIERS})")
    if len(specs) > MAX_TIERS:
        raise RateLimitConfigError(f"{setting}: {len(specs)} tiers; at most {MAX_TIERS}")
    tiers = tuple(parse_tier(s, setting) for s in specs)
    names = [t.name for t in tiers]
    for name in names:
        if names.count(name) > 1:
            raise RateLimitConfigError(f"{setting}: tier name {name!r} appears twice")
    return tiers


@dataclass(frozen=True, slots=True)
class RouteRule:
    method: str  # "*" = any
    path: str
    prefix: bool
    tiers: tuple[Tier, ...] | None  # None = exempt


def parse_routes(value: str, defaults: tuple[Tier, ...],
                 setting: str = "FAULTLINE_RATE_LIMIT_ROUTES") -> list[RouteRule]:
    rules = []
    for part in (p.strip() for p in value.split(";")):
        if not part:
            continue
        route, sep, spec = part.partition("=")
        method, _, path = route.strip().partition(" ")
        path = path.strip()
        where = f"{setting}: route {part!r}"
        if not sep:
            raise RateLimitConfigError(f"{where}: expected 'METHOD /path=tiers' or 'METHOD /path=off'")
        if not _METHOD.match(method):
            raise RateLimitConfigError(f"{where}: method {method!r} must be upper case (GET, POST, ...) or *")
        if not path.startswith("/") or " " in path or "*" in path[:-1]:
            raise RateLimitConfigError(f"{where}: path {path!r} must start with / (a trailing * = prefix)")
        prefix = path.endswith("*")
        path = path.rstrip("*")
        if spec.strip() == "off":
            rules.append(RouteRule(method, path, prefix, None))
            continue
        scope = f"{method}{path}{'*' if prefix else ''}"
        own = {t.name: Tier(t.name, t.limit, t.window_ms, scope) for t in parse_tiers(spec, where)}
        merged = tuple(own.pop(t.name, t) for t in defaults) + tuple(own.values())
        rules.append(RouteRule(method, path, prefix, merged))
    return rules


def validate_config(tiers: str, routes: str) -> None:
    """Called by Settings at start-up: raises RateLimitConfigError naming the bad part."""
    parse_routes(routes, parse_tiers(tiers))
