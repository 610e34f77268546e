"""Rate-limit tiers and per-route rules, parsed from settings strings and validated at start-up.

FAULTLINE_RATE_LIMITS       "short:200/s,medium:6000/m"   name:limit/window, window = [n]ms|s|m|h
FAULTLINE_RATE_LIMIT_ROUTES "POST /errors/log=on; POST /errors/batch=short:20/s; GET /errors/{fp}=on"
    The routes the tiers PROTECT: only the routes listed here are limited (a 404, an unknown route or any
    route not listed never touches a window, so hammering GET /nope with someone's key costs them nothing).
    METHOD (or *) and a path: `{name}` matches one path segment, a trailing * makes it a prefix; then `on`
    (the default tiers), `off` (exempt) or tiers. A route tier whose name is a default tier's replaces it
    there; it counts in its own window (a 20/s batch tier must not count the same client's /errors/log
    requests). Default tiers the route does not name stay shared.
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
_PARAM = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")

# Abuse tiers, per (ingest key, client IP) or per client IP: they stop ONE client from hogging a node, they
# are not the project's budget (that is the per-project event quota, core/ratelimit/quota.py). So they must
# let one busy application host through an incident: 200 requests/s in bursts, 100/s sustained over a
# minute (a node serves ~1,250 ingest requests/s, README "Measured results", so one client still cannot take
# a whole node). No hour tier: an hour-long lockout after a burst is what broke ingest during incidents.
DEFAULT_TIERS = "short:200/s,medium:6000/m"
# The routes the tiers protect (nothing else is limited): ingest (a batch carries up to 1,000 events, so
# 20/s per client is already 20,000 events/s), the Sentry ingest routes, and the token-protected reads and
# admin routes (slows token guessing). Everything else (404s, static files, docs) is not limited here; the
# nginx edge bounds raw request floods per IP.
DEFAULT_ROUTES = ("POST /errors/log=on; POST /errors/batch=short:20/s; "
                  "POST /api/{project}/envelope/=on; POST /api/{project}/store/=on; "
                  "GET /errors=on; GET /errors/{fingerprint}=on; GET /jobs/{id}=on; "
                  "GET /api/projects=on; PUT /api/projects/{id}/quota=on")
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
    pattern: re.Pattern[str] | None = None  # set when the path has {param} segments

    def matches(self, path: str) -> bool:
        if self.pattern is not None:
            return self.pattern.match(path) is not None
        return path.startswith(self.path) if self.prefix else path == self.path


def _template(path: str, prefix: bool) -> re.Pattern[str] | None:
    """`/api/{project}/envelope/` -> a regex where each {param} is one non-empty segment (no `/`)."""
    if not _PARAM.search(path):
        return None
    parts = _PARAM.split(path)
    body = "[^/]+".join(re.escape(p) for p in parts)
    return re.compile("^" + body + ("" if prefix else "$"))


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
        if not path.startswith("/") or " " in path or "*" in path[:-1] or _PARAM.sub("", path).count("{"):
            raise RateLimitConfigError(f"{where}: path {path!r} must start with / ({{name}} = one segment, "
                                       "a trailing * = prefix)")
        prefix = path.endswith("*")
        path = path.rstrip("*")
        pattern = _template(path, prefix)
        if spec.strip() == "off":
            rules.append(RouteRule(method, path, prefix, None, pattern))
            continue
        if spec.strip() == "on":
            rules.append(RouteRule(method, path, prefix, defaults, pattern))
            continue
        scope = f"{method}{path}{'*' if prefix else ''}"
        own = {t.name: Tier(t.name, t.limit, t.window_ms, scope) for t in parse_tiers(spec, where)}
        merged = tuple(own.pop(t.name, t) for t in defaults) + tuple(own.values())
        rules.append(RouteRule(method, path, prefix, merged, pattern))
    return rules


def validate_config(tiers: str, routes: str) -> None:
    """Called by Settings at start-up: raises RateLimitConfigError naming the bad part."""
    parse_routes(routes, parse_tiers(tiers))
