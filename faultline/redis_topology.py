"""Local Redis Cluster and Sentinel set-ups on free loopback ports, so both can be tried on one machine.

`faultline up --redis cluster`: 3 primaries + 3 replicas (redis-server --cluster-enabled, joined by
`redis-cli --cluster create`); `--redis sentinel`: 1 primary, 2 replicas, 3 Sentinels. Every process is a
`Supervised` (faultline/services.py): the stack's supervisor restarts it on its port and data directory (a
cluster node rejoins from its nodes.conf as a replica; a Sentinel-managed node is reconfigured by the
Sentinels). Each is stopped by its own pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_sync
from mirakuru import TCPExecutor

from faultline.liveness import Ping, tcp_answers
from faultline.procs import Backoff
from faultline.services import RedisServer, Supervised, free_port, require

# Failure detection: 1 s for a cluster node or a Sentinel-watched primary. Production clusters use
# longer (15 s is Redis's default) to ride out network blips; on loopback a dead process is dead.
NODE_TIMEOUT_MS = 1000
SENTINEL_DOWN_AFTER_MS = 1000
SERVICE = "faultline"


def _client(port: int, password: str | None) -> redis_sync.Redis:
    return redis_sync.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=2)


def _wait(check: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except redis_sync.RedisError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(0.2)


@dataclass
class LocalRedisCluster:
    base: Path
    password: str | None = None
    primaries: int = 3
    replicas: int = 1  # per primary
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return "redis+cluster://" + auth + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:self.primaries])

    def members(self) -> list[tuple[Supervised, str]]:
        return [(n, f"redis-{i + 1}") for i, n in enumerate(self.nodes)]

    def start(self) -> LocalRedisCluster:
        fresh = not self.nodes
        for i in range(self.primaries * (1 + self.replicas)):
            if fresh:
                d = self.base / f"node-{i + 1}"
                self.nodes.append(RedisServer(d, password=self.password, extra_args=[
                    "--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf"),
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                    # a replica fails over however long since its primary last wrote to it: the default (10)
                    # refuses after ~node-timeout x 10 + 10 s without traffic, leaving an idle shard's slots
                    # unserved for good when its primary dies (seen: no promotion 12 s after a SIGKILL)
                    "--cluster-replica-validity-factor", "0",
                    # its own bus port: the default (port + 10,000) fails for a free port above 55,535
                    "--cluster-port", str(free_port())]))
            self.nodes[i].start()
        if not self._formed():
            env = {**os.environ, **({"REDISCLI_AUTH": self.password} if self.password else {})}  # not in `ps`
            subprocess.run([require("redis-cli", "redis-tools"), "--cluster", "create",
                            *(f"127.0.0.1:{n.port}" for n in self.nodes), "--cluster-replicas", str(self.replicas),
                            "--cluster-yes"], check=True, env=env, stdout=subprocess.DEVNULL, timeout=60)
        _wait(self._formed, "redis cluster")
        return self

    def _formed(self) -> bool:
        """Every node sees state ok and every primary has its replicas."""
        for n in self.nodes:
            with _client(n.port, self.password) as c:
                if c.execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") < 0:
                    return False
        return len(self.primary_ports()) == self.primaries and all(
            len(r) == self.replicas for r in self.topology().values())

    def topology(self) -> dict[int, list[int]]:
        """primary port -> its replicas' ports, as the cluster sees it now (asked of a live node)."""
        for n in self.nodes:
            if not n.alive():
                continue
            try:
                with _client(n.port, self.password) as c:
                    raw = c.execute_command("CLUSTER", "NODES").decode()
            except redis_sync.RedisError:
                continue
            ids: dict[str, int] = {}
            rows = [line.split() for line in raw.splitlines() if line.strip()]
            for row in rows:
                ids[row[0]] = int(row[1].split("@")[0].rsplit(":", 1)[1])
            out: dict[int, list[int]] = {}
            for row in rows:
                if "master" in row[2] and "fail" not in row[2] and len(row) > 8:  # a primary serving slots
                    out.setdefault(ids[row[0]], [])
            for row in rows:
                if "slave" in row[2] and "fail" not in row[2] and ids.get(row[3]) in out:
                    out[ids[row[3]]].append(ids[row[0]])
            return out
        return {}

    def primary_ports(self) -> list[int]:
        return sorted(self.topology())

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


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


def kill(server: RedisServer) -> None:
    """SIGKILL one node by its own pid (a crash, not a shutdown)."""
    assert server.proc is not None and server.proc.process is not None
    os.kill(server.proc.process.pid, signal.SIGKILL)
    server.proc.process.wait()
    server.proc._clear_process()
