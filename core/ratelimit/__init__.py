"""Rate limiting shared by the API nodes.

tiers.py + policy.py: tiers and route rules from settings; proxies.py: trusted proxy networks;
limiter.py: the interface and the in-process backend; redis_limiter.py: the Redis backend (one Lua call);
factory.py: the backend a setting selects; quota.py: per-project event quotas and the new-group cap (decided
in core/scripts/ingest.lua). The HTTP side (client identity, headers, 429/503) is api/ratelimit.py; the
Socket.IO side is realtime/limits.py. This file imports nothing so that core/settings.py can validate with tiers.py.
"""
