"""Local Redis Cluster and Sentinel set-ups on free loopback ports, so both can be tried on one machine.

`faultline up --redis cluster`: 3 primaries + 3 replicas (redis-server --cluster-enabled, joined by
`redis-cli --cluster create`); `--redis sentinel` is in faultline/redis_sentinel.py. Every process is a
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

from faultline.services import RedisServer, Supervised, free_port, require

# Failure detection: 1 s for a cluster node, 1.5 s for a Sentinel-watched primary. Production uses longer
# (15 s cluster-node-timeout, 30 s down-after-milliseconds are Redis's defaults) to ride out network blips;
# on loopback a dead process is dead. Sentinel's 1.5 s, not 1 s: a Sentinel re-pointed at a just-promoted
# replica must get a PING answer within it, and once (CI, 2026-11-30) one did not within 1 s: it failed the new
# primary over again, the first one stayed a primary until Sentinel converted it ~10 s later, and the second,
# short of a replica, refused writes (min-replicas-to-write) all that time (tests/e2e/test_redis_sentinel.py).
NODE_TIMEOUT_MS = 1000
SENTINEL_DOWN_AFTER_MS = 1500
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


def kill(server: RedisServer) -> None:
    """SIGKILL one node by its own pid (a crash, not a shutdown)."""
    assert server.proc is not None and server.proc.process is not None
    os.kill(server.proc.process.pid, signal.SIGKILL)
    server.proc.process.wait()
    server.proc._clear_process()
