"""Which tiers apply to a request: built-in exemptions, then the route rules; a route not listed is not limited.

Looked up on every request before routing, so it is a dict hit for exact rules and a short scan of the
(few) template and prefix rules. Only listed routes are limited: a 404 or any other route never touches a
window, so nobody can use up a client's (key, IP) windows by sending it somewhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.ratelimit.tiers import EXEMPT_PREFIXES, RouteRule, Tier, parse_routes, parse_tiers


@dataclass
class RatePolicy:
    defaults: tuple[Tier, ...]
    rules: list[RouteRule] = field(default_factory=list)

    def __post_init__(self) -> None:
        plain = [r for r in self.rules if not r.prefix and r.pattern is None]
        self._exact = {(r.method, r.path): r.tiers for r in plain}
        # templates in the order given, then prefixes longest first ("/errors/batch*" wins over "/errors*")
        self._scan = ([r for r in self.rules if r.pattern is not None and not r.prefix]
                      + sorted((r for r in self.rules if r.prefix), key=lambda r: -len(r.path)))

    @classmethod
    def parse(cls, tiers: str, routes: str = "") -> RatePolicy:
        defaults = parse_tiers(tiers)
        return cls(defaults, parse_routes(routes, defaults))

    def tiers_for(self, method: str, path: str) -> tuple[Tier, ...] | None:
        """The tiers of this request, or None when it is not limited (exempt, or a route not listed)."""
        if path.startswith(EXEMPT_PREFIXES):
            return None
        exact = self._exact
        if (method, path) in exact:
            return exact[(method, path)]
        if ("*", path) in exact:
            return exact[("*", path)]
        for rule in self._scan:
            if rule.method in ("*", method) and rule.matches(path):
                return rule.tiers
        return None
