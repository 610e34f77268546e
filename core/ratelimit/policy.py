"""Which tiers apply to a request: built-in exemptions, then route rules, then the default tiers.

Looked up on every request before routing, so it is a dict hit for exact rules and a short scan of the
(few) prefix rules; the path templates of the router are not known yet at that point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.ratelimit.tiers import EXEMPT_PREFIXES, RouteRule, Tier, parse_routes, parse_tiers


@dataclass
class RatePolicy:
    defaults: tuple[Tier, ...]
    rules: list[RouteRule] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._exact = {(r.method, r.path): r.tiers for r in self.rules if not r.prefix}
        # longest prefix first, so "/errors/batch*" wins over "/errors*"
        self._prefixes = sorted((r for r in self.rules if r.prefix), key=lambda r: -len(r.path))

    @classmethod
    def parse(cls, tiers: str, routes: str = "") -> RatePolicy:
        defaults = parse_tiers(tiers)
        return cls(defaults, parse_routes(routes, defaults))

    def tiers_for(self, method: str, path: str) -> tuple[Tier, ...] | None:
        """The tiers of this request, or None when it is exempt."""
        if path.startswith(EXEMPT_PREFIXES):
            return None
        exact = self._exact
        if exact:
            if (method, path) in exact:
                return exact[(method, path)]
            if ("*", path) in exact:
                return exact[("*", path)]
        for rule in self._prefixes:
            if path.startswith(rule.path) and rule.method in ("*", method):
                return rule.tiers
        return self.defaults
