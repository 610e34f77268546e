"""Benchmarks and load tests: `make bench` (wrk saturation) and `make loadtest SCENARIO=...` (locust)."""
