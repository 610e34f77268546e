"""Rate limiting shared by the API nodes.

tiers.py + policy.py: tiers and route rules from settings; proxies.py: trusted proxy networks;
limiter.py: the interface and the in-process backend; redis_limiter.py: the Redis backend (one Lua call);
factory.py: the backend a setting selects. The HTTP side (client identity, headers, 429/503) is
api/ratelimit.py. This file imports nothing so that core/settings.py can validate with tiers.py.
"""
