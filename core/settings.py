"""One Settings object for every process, read from FAULTLINE_* environment variables.

Defaults say why they are what they are; production refuses the development secrets.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.ratelimit.proxies import parse_cidrs
from core.ratelimit.tiers import DEFAULT_ROUTES, DEFAULT_TIERS, validate_config

DEV_ADMIN_TOKEN = "dev-admin-token"
DEV_INGEST_KEY = "dev-ingest-key"
DATA_DIR = Path(".faultline")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FAULTLINE_", extra="ignore")

    env: Literal["development", "production"] = "development"
    node_name: str = Field(default_factory=lambda: f"node-{secrets.token_hex(3)}")

    # Redis holds counters, dedup keys, the task stream and pub/sub: one URL for all of them.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # 0.5 s: a healthy Redis answers in < 1 ms; past this we answer 503 rather than hang a client.
    redis_timeout: float = 0.5
    # Per-process pool; requests beyond it wait for a connection instead of failing with 500.
    redis_pool_size: int = 256
    # Prefix of every key (see core/keys.py); lets several stacks share one Redis.
    key_prefix: str = "fl"

    # None = embedded SQLite under .faultline/ (one box, no server); MariaDB/MySQL in production.
    database_url: str | None = None
    db_pool_size: int = 5

    admin_token: str | None = None
    dashboard_token: str | None = None
    # Read-only dashboard token scope: comma-separated project ids, empty = every project.
    dashboard_projects: str = Field(default="", pattern=r"^[0-9,\s]*$")
    # Live feed: the coalescer emits at most once per interval per room (4/s), whatever the ingest rate.
    feed_interval: float = Field(default=0.25, gt=0.0, le=5.0)
    # Bootstrap project key: `faultline up` creates the "default" project with it.
    ingest_key: str | None = None

    # Limits on what a client may send; nginx's client_max_body_size is rendered from max_body_bytes.
    max_body_bytes: int = 1_048_576
    batch_max_events: int = 1000

    # Rate limiting (core/ratelimit/, api/ratelimit.py), per client = ingest key when known, else client IP.
    # Tiers "name:limit/window" (the seed's defaults); route rules "METHOD /path=tiers|off" separated by ";".
    # Both are parsed at start-up: a bad value stops the process with a message naming the bad part.
    rate_limit_enabled: bool = True
    rate_limits: str = DEFAULT_TIERS
    rate_limit_routes: str = DEFAULT_ROUTES
    # redis: exact across nodes (one Lua call per request); memory: a single node without Redis.
    rate_limit_backend: Literal["redis", "memory"] = "redis"
    # Redis unreachable: refuse with a fast 503 (default) rather than let unlimited traffic through.
    rate_limit_fail_open: bool = False
    # X-Forwarded-For / X-Real-IP are believed only from these peers (nginx on the same host by default).
    trusted_proxies: str = "127.0.0.1/32,::1/128"

    # A repeated event_id inside this window is accepted but not counted. 900 s covers client retries;
    # at 1,000 events/s it costs ~0.9 M small keys (~80 MB) in Redis.
    dedup_ttl: int = 900
    # Counts reach the DB once per interval: 1 DB write per group per 30 s instead of 1 per event.
    sync_interval: float = 30.0
    samples_per_group: int = 5

    # Queue bounds: past the soft limit ingest sheds load with 503 + Retry-After; the hard limit
    # takes the node out of readiness.
    queue_soft_limit: int = 200_000
    queue_hard_limit: int = 1_000_000

    # Retries of a failing task: delay = base * 2^(attempt-1), "equal jitter" (half fixed, half random),
    # capped; after the last attempt the task goes to the dead-letter list. DB outages retry forever.
    retry_max_attempts: int = 5
    retry_base_delay: float = 1.0
    retry_max_delay: float = 60.0
    # A message unacked this long belongs to a dead worker and is claimed by a live one. A batch
    # flush takes < 1 s, so 15 s never steals a running task yet redelivers "within seconds".
    redeliver_after: float = 15.0
    worker_concurrency: int = 200
    # The batching writer flushes at this many events or after this delay, whichever comes first.
    write_batch_size: int = 500
    write_batch_delay: float = 0.05

    # Workers and schedulers serve their /metrics on this port when set (API nodes use their HTTP port).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    # SIGTERM sequence of an API node (faultline/uvicorn_worker.py): readiness turns 503 at once, the node
    # keeps serving for drain_delay (5 s: a load balancer polling readiness every 2 s with 2 failures
    # notices in 4 s), then stops accepting, finishes in-flight requests and closes, all within
    # shutdown_timeout (25 s, below Kubernetes' default 30 s grace period).
    drain_delay: float = 5.0
    shutdown_timeout: float = 25.0
    # Liveness fails above this resident set size (MB) so the orchestrator restarts a leaking process;
    # keep it below the container's memory limit (deploy/k8s: 512 Mi) so we restart before the OOM killer.
    memory_limit_mb: int = 450
    # Liveness fails when the event loop takes longer than this to run a callback: 5 s means stuck,
    # not busy (under saturation the loop lags ~0.1 s, docs/performance-floor).
    liveness_max_lag: float = 5.0
    # Reported (not required) by readiness: disk used above this fraction of the data volume.
    disk_max_used: float = 0.9

    # --- local stack (`faultline up`, faultline/stackfile.py) ---
    # Where `faultline up` keeps its data, credentials.env and stack.json (the running stack's connection
    # settings, which every other CLI command reads); relative to the working directory, like a project's
    # .git, so each checkout runs its own stack.
    data_dir: Path = DATA_DIR

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'faultline.db').resolve()}"

    @model_validator(mode="after")
    def _rate_limits(self) -> Settings:
        validate_config(self.rate_limits, self.rate_limit_routes)
        parse_cidrs(self.trusted_proxies)
        return self

    @model_validator(mode="after")
    def _secrets(self) -> Settings:
        if self.env == "production":
            for name in ("admin_token", "ingest_key", "dashboard_token"):
                value = getattr(self, name)
                if value in (DEV_ADMIN_TOKEN, DEV_INGEST_KEY) or (value is not None and len(value) < 16):
                    raise ValueError(f"FAULTLINE_{name.upper()} is a development or short secret")
            if not self.admin_token:
                raise ValueError("FAULTLINE_ADMIN_TOKEN must be set in production")
        else:
            self.admin_token = self.admin_token or DEV_ADMIN_TOKEN
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
