"""A local Redis Sentinel set-up on free loopback ports (`faultline up --redis sentinel`): 1 primary, 2 replicas,
3 Sentinels, each a `Supervised` process stopped by its own pid. The primary is fenced for planned failovers
(min-replicas-to-write, docs/scaling.md). Shared helpers live in faultline/redis_topology.py.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_sync
from mirakuru import TCPExecutor

from faultline.liveness import Ping, tcp_answers
from faultline.procs import Backoff
from faultline.redis_topology import SENTINEL_DOWN_AFTER_MS, SERVICE, _client, _wait
from faultline.services import RedisServer, Supervised, free_port, require


@dataclass
class SentinelServer(Supervised):
    """One redis-sentinel process watching the primary named SERVICE."""

    data_dir: Path
    primary_port: int
    password: str | None = None
    port: int = field(default_factory=free_port)
    proc: TCPExecutor | None = None
    backoff: Backoff = field(default_factory=Backoff)
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0

    def ping(self) -> Ping:
        return tcp_answers("127.0.0.1", self.port, b"PING\r\n")

    def start(self) -> SentinelServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "sentinel.conf"
        if not conf.exists():  # Sentinel rewrites its config with what it learns: keep it across restarts
            lines = [f"port {self.port}", "bind 127.0.0.1", f"dir {self.data_dir}", "daemonize no",
                     f"logfile {self.data_dir / 'sentinel.log'}",
                     f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2",
                     f"sentinel down-after-milliseconds {SERVICE} {SENTINEL_DOWN_AFTER_MS}",
                     f"sentinel failover-timeout {SERVICE} 10000", f"sentinel parallel-syncs {SERVICE} 1"]
            if self.password:
                lines += [f"requirepass {self.password}", f"sentinel auth-pass {SERVICE} {self.password}",
                          f"sentinel sentinel-pass {self.password}"]
            fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("\n".join(lines) + "\n")
        self.proc = TCPExecutor([require("redis-server", "redis-sentinel"), str(conf), "--sentinel"],
                                host="127.0.0.1", port=self.port, timeout=20)
        self.proc.start()
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


@dataclass
class LocalRedisSentinel:
    base: Path
    password: str | None = None
    replicas: int = 2
    sentinels: int = 3
    # Fencing for planned failovers (docs/scaling.md): the primary refuses writes unless a replica
    # acknowledged within 2 s, so a demoted-but-not-yet-told primary stops taking writes quickly.
    min_replicas_to_write: int = 1
    data: list[RedisServer] = field(default_factory=list)
    watchers: list[SentinelServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis+sentinel://{auth}" + ",".join(f"127.0.0.1:{s.port}" for s in self.watchers) + f"/{SERVICE}"

    def members(self) -> list[tuple[Supervised, str]]:
        return [*((d, f"redis-{i + 1}") for i, d in enumerate(self.data)),
                *((s, f"sentinel-{i + 1}") for i, s in enumerate(self.watchers))]

    def start(self) -> LocalRedisSentinel:
        fence = ["--min-replicas-to-write", str(self.min_replicas_to_write), "--min-replicas-max-lag", "2",
                 # a replica re-pointed by a failover full-syncs from the new primary at once: Redis 7.0's
                 # default waits 5 s for more replicas first, and the new primary, short of replicas,
                 # refuses writes (min-replicas-to-write) all that time (measured: NOREPLICAS 1.2-5.6 s)
                 "--repl-diskless-sync-delay", "0"]
        primary = RedisServer(self.base / "redis-1", password=self.password, extra_args=fence).start()
        self.data.append(primary)
        for i in range(self.replicas):
            self.data.append(RedisServer(self.base / f"redis-{i + 2}", password=self.password, extra_args=[
                *fence, "--replicaof", "127.0.0.1", str(primary.port)]).start())
        _wait(lambda: self._replicas_of(primary.port) == self.replicas, "redis replicas")
        _wait(lambda: self._good_replicas(primary.port) >= self.min_replicas_to_write, "writable primary")
        for i in range(self.sentinels):
            self.watchers.append(SentinelServer(self.base / f"sentinel-{i + 1}", primary.port,
                                                self.password).start())
        _wait(lambda: all(self._sentinel_sees(s) for s in self.watchers), "redis sentinels")
        return self

    def _replicas_of(self, port: int) -> int:
        with _client(port, self.password) as c:
            return int(c.info("replication").get("connected_slaves", 0))

    def _good_replicas(self, port: int) -> int:
        """Replicas the primary counts for min-replicas-to-write (refreshed by its once-a-second cron)."""
        with _client(port, self.password) as c:
            return int(c.info("replication").get("min_slaves_good_slaves", 0))

    def _sentinel_sees(self, s: SentinelServer) -> bool:
        with _client(s.port, self.password) as c:
            info = c.sentinel_master(SERVICE)  # parsed by redis-py into a dict
            return int(info.get("num-other-sentinels", 0)) == self.sentinels - 1 and int(
                info.get("num-slaves", 0)) == self.replicas

    def primary_port(self) -> int:
        """The port the Sentinels name as primary now."""
        for s in self.watchers:
            try:
                with _client(s.port, self.password) as c:
                    _host, port = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                    return int(port)
            except redis_sync.RedisError:
                continue
        raise RuntimeError("no Sentinel answers")

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.data if n.port == port)

    def stop(self) -> None:
        for s in self.watchers:
            s.stop()
        for d in self.data:
            d.stop()
