"""One Settings object for every process, read from FAULTLINE_* environment variables.

Defaults say why they are what they are; production refuses the development secrets.
"""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.ratelimit.proxies import parse_cidrs
from core.ratelimit.tiers import DEFAULT_ROUTES, DEFAULT_TIERS, parse_tier, validate_config

DEV_ADMIN_TOKEN = "dev-admin-token"
DEV_INGEST_KEY = "dev-ingest-key"
DATA_DIR = Path(".faultline")


class Settings(BaseSettings):
    # Environment variables stay lenient (a FAULTLINE_* variable of another tool, or of a newer version, must
    # not stop a process); names given in code must exist: `Settings(sync_intervall=1)` is a typo, refused.
    model_config = SettingsConfigDict(env_prefix="FAULTLINE_", extra="ignore")

    def __init__(self, **values: Any) -> None:
        unknown = sorted(k for k in values if not k.startswith("_") and k not in type(self).model_fields)
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(unknown)}")
        super().__init__(**values)

    @classmethod
    def from_env_map(cls, env: dict[str, str]) -> Settings:
        """Settings from a FAULTLINE_* environment given as a dict (a child's env): unknown names ignored,
        as they are in the real environment."""
        values = {k.removeprefix("FAULTLINE_").lower(): v for k, v in env.items() if k.startswith("FAULTLINE_")}
        return cls(**{k: v for k, v in values.items() if k in cls.model_fields})

    def to_env_map(self, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
        """The FAULTLINE_* environment that makes a child process see these settings (from_env_map's inverse)."""
        return {f"FAULTLINE_{name.upper()}": str(value) for name, value in self.model_dump().items()
                if value is not None and name not in skip}

    env: Literal["development", "production"] = "development"
    # This process's name, one for everything that names it: heartbeat key, `worker-check`, the feed's "node",
    # consumer names. Kubernetes sets the pod name, `faultline up` one per process; else the host name.
    node_name: str = Field(default_factory=socket.gethostname)

    # Log level of every process (read from the environment before logging is set up: faultline/cli.py,
    # gunicorn_conf.py, uvicorn_worker.py); declared here so a bad value stops start-up with its name.
    log_level: Literal["debug", "info", "warning", "error", "critical",
                       "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "info"

    # Redis holds counters, dedup keys, the task stream and pub/sub: one URL for all of them.
    # redis://host:port/db (one server), redis+sentinel://h1:p1,h2:p2/service[/db] (the primary Sentinel
    # names), redis+cluster://h1:p1,h2:p2 (Redis Cluster; seed nodes). core/redis.py picks the client.
    redis_url: str = Field(default="redis://127.0.0.1:6379/0",
                           pattern=r"^(redis|rediss|redis\+sentinel|redis\+cluster|unix)://")
    # Logical shards of the per-group keys (core/keys.py): each has its own hash tag, task stream and sync.
    # Unset: 16 on Redis Cluster, 1 on one server or Sentinel (see `key_shards`). 16: a cluster of up to 16
    # primaries gets work on each (a shard never splits), an even share on 2, 4, 8 or 16 of them, and 6/5/5
    # on 3; each shard costs every worker one blocked reader and the scheduler/feed one call per round.
    # 1 = the key names of a single-Redis stack: on one server shards buy nothing and cost CPU (make bench,
    # same session: +50 % API and worker CPU per event at 16; docs/scaling.md). Changing it on a stack that
    # holds counts strands their pending deltas in the old shards: drain and sync first.
    redis_shards: int | None = Field(default=None, ge=1, le=256)
    # Replicas that must hold an ingest call's writes before its events are answered 202 (Redis WAIT on the
    # call's connection, core/sentinel.py `ReplicatedScript`): fencing against a failover dropping acknowledged
    # events. Unset: 1 on Sentinel (a planned SENTINEL FAILOVER lost 517 of 653 acknowledged writes without
    # it), 0 on one server (nothing to wait for; exactly today's path) and on Cluster (CLUSTER FAILOVER is
    # coordinated; a killed primary's replica has what was answered, see docs/scaling.md). A call whose
    # writes no replica confirmed is treated as unanswered: re-run with the same token, then 503.
    redis_wait_replicas: int | None = Field(default=None, ge=0, le=16)
    # How long WAIT may block: well under the ingest reply margin (0.2 s, api/ingestrun.py). On a LAN a replica
    # acknowledges in about a millisecond; 0.1 s absorbs a stalled replica process.
    redis_wait_timeout: float = Field(default=0.1, gt=0.0, le=0.15)
    # 0.5 s: a healthy Redis answers in < 1 ms; past this we answer 503 rather than hang a client.
    redis_timeout: float = 0.5
    # Per-process pool; requests beyond it wait for a connection instead of failing with 500.
    redis_pool_size: int = 256
    # Prefix of every key (see core/keys.py); lets several stacks share one Redis.
    key_prefix: str = "fl"

    # None = embedded SQLite under .faultline/ (one box, no server); MariaDB/MySQL in production.
    database_url: str | None = None
    db_pool_size: int = 5
    # A transaction the server rolled back for a conflict (1213 deadlock or Galera certification failure,
    # 1205 lock wait) or whose connection died is run again at once, up to this many attempts in all
    # (core/db/rerun.py), with backoff from 20 ms doubling to 1 s: two writers on hot rows collide again
    # only if they land in the same few ms, so a few attempts clear nearly every conflict, and 8 bound the
    # wait to ~3 s before the task goes to the slower transient-retry queue (core/retry.py).
    db_rerun_attempts: int = Field(default=8, ge=1, le=50)
    db_rerun_base_delay: float = Field(default=0.02, gt=0.0)
    db_rerun_max_delay: float = Field(default=1.0, gt=0.0)

    admin_token: str | None = None
    dashboard_token: str | None = None
    # Read-only dashboard token scope: comma-separated project ids, empty = every project.
    dashboard_projects: str = Field(default="", pattern=r"^[0-9,\s]*$")
    # Live feed: the coalescer emits at most once per interval per room (4/s), whatever the ingest rate.
    feed_interval: float = Field(default=0.25, gt=0.0, le=5.0)
    # Spike detector (core/feed.py): a group is watched this long before it may spike (a brand-new group is
    # "new", not a spike; 10 s lets its 60-s average form).
    spike_warmup: float = Field(default=10.0, ge=0.0)
    # Bootstrap project key: `faultline up` creates the "default" project with it.
    ingest_key: str | None = None
    # Seconds between two reloads of an API node's project-key cache (core/runtime.py): a revoked key stops
    # working on every node within this. A new key works at once (a cache miss asks Redis).
    projects_refresh: float = Field(default=10.0, ge=1.0)

    # Limits on what a client may send; nginx's client_max_body_size is rendered from max_body_bytes.
    max_body_bytes: int = 1_048_576
    batch_max_events: int = 1000
    # Nesting limit of an event's `context` (levels of objects/arrays): 32 is far more than any error report
    # needs and far below orjson's 254-level serialisation limit (past which queuing the event would fail).
    max_depth: int = Field(default=32, ge=1, le=200)

    # Rate limiting (core/ratelimit/, api/ratelimit.py), per client = (ingest key, IP) when the key is known,
    # else the client IP; only on the routes listed in rate_limit_routes (why the defaults: tiers.py).
    # Tiers "name:limit/window"; route rules "METHOD /path=on|off|tiers" separated by ";".
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

    # --- Per-project event quotas and the new-group cap (core/ratelimit/quota.py, ingest.lua) ---
    # Defaults for projects without their own quota (`faultline project quota`, PUT /api/projects/{id}/quota);
    # 0 = no limit. They count EVENTS (a batch of 100 counts 100), per project, GCRA: a project may send a
    # whole minute's budget at once, then at the steady rate. 300,000/min = 5,000 events/s averaged: an
    # application failing on every request through an incident gets through (one project can use about all
    # the single-event capacity measured in the README, 3,700 req/s), while a runaway client cannot fill
    # the queue (soft limit 200,000) for everyone in one go. 10,000/s caps a burst at about half of what the
    # whole stack ingests in batches (22,600 events/s), so other projects still get in.
    # FAULTLINE_RATE_LIMIT_ENABLED=false turns quotas and the group cap off too (load tests).
    project_quota_per_second: int = Field(default=10_000, ge=0)
    project_quota_per_minute: int = Field(default=300_000, ge=0)
    # New groups per project per rolling hour; events of further new groups are counted into ONE overflow
    # group per project. 1,000/h: a real application creates a handful of new groups per deploy; random
    # client fingerprints would otherwise create groups (Redis hashes, DB rows) without limit.
    project_new_groups_per_hour: int = Field(default=1000, ge=0)
    # Socket.IO (realtime/limits.py), per client IP and per process (no I/O to refuse): connection attempts,
    # bad-token connects (then the IP is refused at the door until the window frees), and events
    # (subscribe...). A dashboard connects once and reconnects with back-off; a wall of 20 tabs behind one
    # NAT still fits. Refusals are logged once per socket_log_interval seconds with counts.
    socket_connect_limit: str = "30/10s"
    socket_bad_token_limit: str = "10/m"
    socket_event_limit: str = "30/10s"
    socket_log_interval: float = Field(default=10.0, gt=0)

    # A repeated event_id inside this window is accepted but not counted. 900 s covers client retries;
    # at 1,000 events/s it remembers ~0.95 M ids at ~20 B each (~19 MB; core/dedup.py, loadtest/memsoak.py).
    dedup_ttl: int = 900
    # The window is cut into this many time buckets (+1 being filled); whole buckets expire, so an id is
    # remembered ttl .. ttl + ttl/buckets s and memory swings by ~1/buckets of the id part: 10 keeps it
    # flat within 10 % for ~11 hash lookups per new event (core/dedup.py).
    dedup_buckets: int = Field(default=10, ge=1, le=60)
    # Most events in ONE ingest script call (whole requests only, so a request is all counted or none; a
    # request above it goes alone, bounded by batch_max_events). Measured 117 us/event of Redis time on this
    # 2-core box at load 14 (far less when quiet): 250 keeps a call ~30 ms, well inside ingest's reply margin.
    ingest_call_max_events: int = Field(default=250, ge=1)
    # Total time an ingest request may wait on Redis, re-run of an unanswered call included, before its
    # fast 503 + Retry-After. 0.8 s: two 0.4 s waits, leaving 0.2 s of the 1 s promise for the rest of the request.
    ingest_budget: float = Field(default=0.8, gt=0.4, le=5.0)
    # Groups with no event for this long leave the live hashes and the feed (the DB keeps them). 24 h: a
    # dashboard shows today's groups live; memory then grows with groups per day, not groups ever.
    live_group_idle: float = Field(default=86_400.0, ge=1.0)
    # Fields of the live hash the pruner looks at per scheduler interval (bounded work per run).
    live_prune_step: int = Field(default=20_000, ge=100)

    # Counts reach the DB once per interval: 1 DB write per group per 30 s instead of 1 per event.
    sync_interval: float = 30.0
    samples_per_group: int = 5
    # Hour buckets of the group page's chart are kept this long: two weeks show a weekly pattern and its
    # repeat; one row per group per active hour, so the table stays ~336 rows per busy group.
    hourly_retention_days: int = Field(default=14, ge=1, le=366)

    # Queue bounds: past the soft limit ingest sheds load with 503 + Retry-After. The hard limit is reported
    # by readiness (not required): the queue is the same for every node, and taking every node out of
    # rotation at once would turn a deep queue into an outage of the read API and the live feed as well.
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
    # Messages a worker holds at once (read, not yet acked); it bounds a worker's memory (a message may carry
    # 1,000 events). The writer starts a batch early once half of them wait for it (workers/handoff.py).
    worker_concurrency: int = 200
    # The batching writer flushes at this many events or after this delay, whichever comes first (or at
    # worker_concurrency / 2 messages). A group row and up to samples_per_group samples are written per
    # group and BATCH, so a longer batch writes fewer rows per event (60 % of events hit 5 groups):
    # 0.25 s / 2,000 instead of 0.05 s / 500 took the workers from 25 to 17 and MariaDB from 15.5 to 7.2 µs
    # CPU per event under `make bench ARGS="--rounds 3 --only ingest,floor"` (2026-11-30, back to back).
    # The price: a group's row and samples land up to 0.25 s later (counts and the live feed come from
    # Redis and do not wait for them).
    write_batch_size: int = 2000
    write_batch_delay: float = 0.25
    # GET /jobs/{id} says "running" for events whose batch write has taken this long (workers/jobstate.py:
    # a state per write costs Redis a read and a write per event; nearly every write commits sooner).
    job_running_after: float = Field(default=0.25, ge=0.0)

    # Workers and schedulers serve their /metrics on this port when set (API nodes use their HTTP port).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    # SIGTERM sequence of an API node (faultline/uvicorn_worker.py): readiness turns 503 at once, the node
    # keeps serving for drain_delay (5 s: a load balancer polling readiness every 2 s with 2 failures
    # notices in 4 s), then stops accepting, finishes in-flight requests and closes, all within
    # shutdown_timeout (25 s, below Kubernetes' default 30 s grace period).
    drain_delay: float = 5.0
    shutdown_timeout: float = 25.0
    # Idle HTTP keep-alive of an API node (gunicorn/uvicorn), in seconds. It must be LONGER than the idle
    # timeout of every proxy that keeps upstream connections to the node: a proxy that reuses a connection
    # the node has just closed gets a reset and answers 502. ingress-nginx keeps them 60 s
    # (upstream-keepalive-timeout), AWS ALB 60 s, our nginx 60 s (deploy/nginx/nginx.conf.tmpl): 75 s.
    keepalive_timeout: float = Field(default=75.0, ge=1.0, le=3600.0)
    # Liveness fails above this resident set size (MB) so the orchestrator restarts a leaking process;
    # keep it below the API container's memory limit (resources.limits.memory in
    # deploy/k8s/base/api-deployment.yaml; the configmap there sets this value) so we restart before the OOM killer.
    memory_limit_mb: int = 450
    # Liveness fails when the event loop takes longer than this to run a callback: 5 s means stuck,
    # not busy (under saturation the loop lags ~0.1 s, shared/notes/performance-floor.md).
    liveness_max_lag: float = 5.0
    # Reported (not required) by readiness: disk used above this fraction of the data volume.
    disk_max_used: float = 0.9

    # Sentry ingest (api/routes/sentry.py). Sentry's own limits are 20 MB compressed / 100 MB decompressed /
    # 1 MB per event item. We keep 20 MB and 1 MB but decompress at most 40 MB per request: the decompressed
    # envelope is held in memory while it is parsed, and an API node must stay under memory_limit_mb with
    # several such requests in flight. nginx's /api/<id>/envelope|store/ location allows 20 MB bodies.
    sentry_max_compressed_bytes: int = 20 * 1024 * 1024
    sentry_max_decompressed_bytes: int = 40 * 1024 * 1024
    sentry_max_event_bytes: int = 1024 * 1024

    # --- local stack (`faultline up`, faultline/stackfile.py) ---
    # Where `faultline up` keeps its data, credentials.env and stack.json (the running stack's connection
    # settings, which every other CLI command reads); relative to the working directory, like a project's
    # .git, so each checkout runs its own stack.
    data_dir: Path = DATA_DIR
    # --- resilience of long-running loops (core/backoff.py) ---
    # Backoff after a Redis/DB error: 0.1 s doubling up to 2 s (equal jitter). The 2 s cap keeps a worker
    # consuming again within ~2 s of Redis returning, at <= 1 attempt/s/loop of load on a dead server.
    loop_backoff_base: float = Field(default=0.1, gt=0.0)
    loop_backoff_max: float = Field(default=2.0, gt=0.0)
    # A loop failing this long (s) exits its process non-zero: a fresh process (new pools, new DNS lookup) is
    # a better bet by then, and the supervisor's restart backoff paces it. 0 = retry forever.
    loop_give_up_after: float = Field(default=600.0, ge=0.0)
    # `faultline worker-check` fails when a worker has fetched nothing and finished no task for this long
    # (s) while the queue holds messages. Healthy workers "fetch" at least once per second (an empty
    # XREADGROUP blocks 1 s), so 30 s means stuck, not busy, and stays under a kubelet's default 3x10 s.
    worker_stall_after: float = Field(default=30.0, gt=0.0)
    # Seconds between two heartbeats of a worker or scheduler (core/heartbeat.py). Shorter only: the key's
    # TTL (20 s) and the supervisor's staleness (5 beats of 2 s, faultline/liveness.py) are sized for 2 s.
    heartbeat_interval: float = Field(default=2.0, gt=0.0, le=2.0)
    # Workers and schedulers also write their heartbeat to a file here (`<dir>/<role>-<name>.json`), read by
    # `faultline worker-check --local`: a liveness check that needs no Redis, so a Redis outage never
    # restarts them (their loops ride it out with backoff). Unset: no file (the Redis heartbeat only).
    liveness_dir: Path | None = None

    # --- alerts (core/alerts/, workers/alerts.py) ---
    # Webhook URLs are fetched by the workers, from inside your network: a rule pointing at 127.0.0.1,
    # 169.254.169.254 (cloud metadata) or a private range would let whoever may create rules probe internal
    # services. So such addresses are refused, when the rule is created and again at every connection (the
    # address actually connected to is checked, no DNS rebinding). Allow them only when your receivers really
    # are internal; tests turn it on because their receivers listen on loopback.
    alert_allow_private_urls: bool = False
    # One webhook attempt may take this long (connect + answer); then it counts as failed and is retried.
    # 10 s: Slack and typical receivers answer in well under a second; a hung receiver holds a worker
    # slot (of worker_concurrency) no longer than this.
    alert_timeout: float = Field(default=10.0, gt=0.0, le=60.0)
    # Default cooldown per (rule, group): after an alert, the same rule stays silent for that group this
    # long, so a storm sends one alert, not thousands. 1 h: the team has been told; a rule may set its own.
    alert_cooldown: float = Field(default=3600.0, ge=0.0)
    # How often "N events in M minutes" rules are evaluated (by one worker per interval): an alert comes
    # at most this late; the work per scan is M HMGETs per rule, over the groups that moved in the last minute.
    alert_scan_interval: float = Field(default=10.0, gt=0.0)

    # --- retention (workers/retention.py has the rest of its numbers) ---
    # Samples (the stored events behind a group) older than this are deleted; groups and their counts stay.
    # 30 days: enough to debug last month's incidents, and the samples table stays a bounded size.
    sample_retention_days: float = Field(default=30.0, gt=0.0)
    # Groups with no event for this long are deleted with their samples (and their Redis state). 90 days: a
    # group that comes back after that is new again, as in Sentry's and Bugsink's defaults.
    group_retention_days: float = Field(default=90.0, gt=0.0)
    # Seconds between retention runs of the scheduler (one replica per run, by a Redis lock).
    retention_interval: float = Field(default=300.0, gt=0.0)
    # Seconds between runs of the per-group sample cap alone (trims each group to its samples_per_group
    # newest). 30 s: at 1,000 events/s the samples table then holds ~30,000 rows beyond the cap at most,
    # where once per retention_interval let a hot group's excess reach ~300,000 rows between two runs.
    sample_cap_interval: float = Field(default=30.0, gt=0.0)

    # --- listening beyond loopback ---
    # The address the API node listens on (`faultline api --host` exports it; the Docker image sets 0.0.0.0).
    # Only used to refuse development secrets on a listener other machines can reach, in any mode.
    bind_host: str = "127.0.0.1"

    @property
    def wait_replicas(self) -> int:
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return 1 if self.redis_url.startswith("redis+sentinel://") else 0

    @property
    def key_shards(self) -> int:
        if self.redis_shards is not None:
            return self.redis_shards
        return 16 if self.redis_url.startswith("redis+cluster://") else 1

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return sqlite_url(self.data_dir)

    @model_validator(mode="after")
    def _rate_limits(self) -> Settings:
        validate_config(self.rate_limits, self.rate_limit_routes)
        for name in ("socket_connect_limit", "socket_bad_token_limit", "socket_event_limit"):
            parse_tier(f"socket:{getattr(self, name)}", f"FAULTLINE_{name.upper()}")
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

    @model_validator(mode="after")
    def _no_default_secret_beyond_loopback(self) -> Settings:
        # Development mode fills in DEV_ADMIN_TOKEN (see _secrets): fine on 127.0.0.1, a published password
        # on 0.0.0.0. Checked whatever the mode, so a forgotten FAULTLINE_ENV cannot open the admin API.
        if is_local_address(self.bind_host):
            return self
        if self.admin_token in (None, DEV_ADMIN_TOKEN):
            raise ValueError(f"FAULTLINE_ADMIN_TOKEN must be set (not the development default) to listen on "
                             f"{self.bind_host}")
        if self.ingest_key == DEV_INGEST_KEY:
            raise ValueError(f"FAULTLINE_INGEST_KEY is the development default; refused on {self.bind_host}")
        return self


# Same floor as the production check of the tokens above.
MIN_SECRET_LENGTH = 16


def is_local_address(host: str) -> bool:
    """True for addresses only this machine can reach: loopback IPs, `localhost`, unix sockets."""
    if host == "localhost" or host.startswith("unix:"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname or 0.0.0.0-like wildcard: assume reachable


def check_project_key(settings: Settings, key: str) -> None:
    """A key chosen by hand (`faultline project create --key`): production refuses short or development keys."""
    if settings.env == "production" and (key in (DEV_ADMIN_TOKEN, DEV_INGEST_KEY) or len(key) < MIN_SECRET_LENGTH):
        raise ValueError(f"an ingest key must be at least {MIN_SECRET_LENGTH} characters and not a development "
                         f"default in production")


@lru_cache
def get_settings() -> Settings:
    return Settings()


def sqlite_url(directory: Path) -> str:
    """The embedded database of a data directory (the default of every process, and `faultline up --db sqlite`)."""
    return f"sqlite+aiosqlite:///{(directory / 'faultline.db').resolve()}"
