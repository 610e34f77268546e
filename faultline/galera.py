"""A throwaway 3-node MariaDB Galera cluster on loopback, for `faultline up --db galera` and the tests.

Every node is a mariadbd with the galera-4 provider on its own free ports (SQL, group communication,
incremental and full state transfer). The first node bootstraps the cluster (`--wsrep-new-cluster`), the
others join it and receive a full copy by rsync (SST). Failure detection is tuned for loopback (a dead
peer is evicted after ~3 s instead of the provider's 15 s default), so a killed node stalls the others'
commits for seconds, not for a quarter of a minute.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from faultline.mariadb import MariaDBServer
from faultline.services import free_port, require

PROVIDER = Path("/usr/lib/galera/libgalera_smm.so")
# Loopback timings: keepalives every 0.5 s, a silent peer suspected after 2 s and evicted after 3 s. The
# provider's defaults (PT1S / PT5S / PT15S) suit real networks, where a short hiccup must not split the cluster.
_TIMINGS = ("evs.keepalive_period=PT0.5S;evs.inactive_check_period=PT0.5S;evs.suspect_timeout=PT2S;"
            "evs.inactive_timeout=PT3S;evs.install_timeout=PT3S;gmcast.peer_timeout=PT2S;"
            # a 16 MB write-set cache instead of 128 MB: allocated at every start, copied by nothing
            "gcache.size=16M")


@dataclass
class GaleraNode(MariaDBServer):
    name: str = "node1"
    group_port: int = field(default_factory=free_port)
    ist_port: int = field(default_factory=free_port)
    sst_port: int = field(default_factory=free_port)
    peers: list[int] = field(default_factory=list)  # every node's group port, this one's included
    bootstrap: bool = False
    log_file_size: str = "16M"  # small: the full state transfer copies it to every joiner

    def os_user(self) -> str:
        # The rsync SST script refuses to run its daemon as root; the Debian package's `mysql` user owns
        # the data directory instead (as the packaged service does).
        return "mysql" if os.geteuid() == 0 else super().os_user()

    def start(self) -> GaleraNode:
        if self.bootstrap and (self.data_dir / "data" / "grastate.dat").exists():
            # founding again from this node's own data (the whole cluster was stopped): say it may
            grastate = self.data_dir / "data" / "grastate.dat"
            grastate.write_text(grastate.read_text().replace("safe_to_bootstrap: 0", "safe_to_bootstrap: 1"))
        for d in (self.data_dir, self.data_dir / "data"):
            d.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(d, "mysql", "mysql")
        super().start()
        return self

    def needs_install(self) -> bool:
        # a joiner's data comes whole from a donor (rsync SST replaces the directory): no install step
        return self.bootstrap and super().needs_install()

    def command(self) -> list[str]:
        if not PROVIDER.exists():
            raise SystemExit(f"{PROVIDER} not found: run `sudo apt-get install -y galera-4` (or `make up`)")
        require("rsync", "rsync")
        cluster = ",".join(f"127.0.0.1:{p}" for p in self.peers)
        options = (f"gmcast.listen_addr=tcp://127.0.0.1:{self.group_port};ist.recv_addr=127.0.0.1:{self.ist_port};"
                   f"{_TIMINGS}")
        cmd = [*super().command(),
               "--wsrep-on=ON", f"--wsrep-provider={PROVIDER}", f"--wsrep-cluster-address=gcomm://{cluster}",
               "--wsrep-cluster-name=faultline", f"--wsrep-node-name={self.name}",
               f"--wsrep-node-address=127.0.0.1:{self.group_port}", f"--wsrep-provider-options={options}",
               "--wsrep-sst-method=rsync", f"--wsrep-sst-receive-address=127.0.0.1:{self.sst_port}",
               # what Galera requires: row-based replication, InnoDB, interleaved auto-increment locks
               "--binlog-format=ROW", "--default-storage-engine=InnoDB", "--innodb-autoinc-lock-mode=2"]
        if self.bootstrap:
            cmd.append("--wsrep-new-cluster")
        return cmd

    @property
    def pid(self) -> int | None:
        return self.proc.process.pid if self.proc and self.proc.process else None

    def kill(self) -> None:
        """SIGKILL this node's mariadbd by its pid (a crash: no goodbye to the group)."""
        if self.pid is not None and self.alive():
            os.kill(self.pid, signal.SIGKILL)
            assert self.proc is not None and self.proc.process is not None
            self.proc.process.wait()
            self.proc._clear_process()

    def status(self, name: str) -> str:
        return self.sql(f"SHOW GLOBAL STATUS LIKE '{name}'").split("\t")[-1].strip()


def _reachable_by_others(path: Path) -> bool:
    """Can another OS user (mysql) walk down to `path`? Every existing ancestor must be o+x."""
    for p in [path, *path.parents]:
        if p.exists() and not p.stat().st_mode & stat.S_IXOTH:
            return False
    return True


@dataclass
class GaleraCluster:
    """`size` nodes on loopback; `url()` lists every node for the engine's failover (core/db/failover.py).

    keep_data=False (tests): the data goes at stop. keep_data=True (`faultline up`): the nodes stop in reverse
    order, so node 1 stops last, is marked safe to bootstrap, and founds the cluster again at the next start
    (the others catch up by incremental transfer)."""

    base_dir: Path
    size: int = 3
    keep_data: bool = False
    nodes: list[GaleraNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = self.base_dir
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0 and not (self.keep_data and _reachable_by_others(self.base_dir)):
            # mariadbd runs as `mysql`, which must reach its data directory: pytest's and home directories
            # are private (0700), so root's nodes keep their data in a directory of their own under /tmp
            self.root = Path(tempfile.mkdtemp(prefix="faultline-galera-"))
            os.chmod(self.root, 0o711)
            self.keep_data = False
        group_ports = [free_port() for _ in range(self.size)]
        self.nodes = [GaleraNode(self.root / f"node{i + 1}", name=f"node{i + 1}", group_port=group_ports[i],
                                 peers=group_ports, bootstrap=i == 0) for i in range(self.size)]

    def start(self) -> GaleraCluster:
        """Node 1 founds the cluster, the others join it one by one (two joining at once make the group
        re-form its view and queue the second transfer behind the first: no faster, and noisier)."""
        for node in self.nodes:
            node.start()
            self.wait_synced(node)
            node.bootstrap = False  # a restart joins the running cluster instead of founding another
        return self

    def wait_synced(self, node: GaleraNode, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if node.status("wsrep_local_state_comment") == "Synced":
                    return
            except subprocess.CalledProcessError:
                pass  # not answering yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"galera {node.name} not synced after {timeout}s (see {node.data_dir}/error.log)")
            time.sleep(0.1)

    def create_database(self, name: str, password: str | None = None) -> str:
        """The database and user (replicated to every node), root locked to the socket on each node (the
        privilege tables themselves are not replicated); returns the URL listing every node."""
        self.nodes[0].create_database(name, password=password)
        for node in self.nodes[1:]:
            node.lock_root()
        return self.url(name, "faultline", password) if password else self.url(name)

    def url(self, database: str = "faultline", user: str = "root", password: str | None = None,
            first: int = 0) -> str:
        """One URL naming every node, starting with node `first`, the one a process prefers."""
        order = self.nodes[first:] + self.nodes[:first]
        auth = f"{user}:{password}" if password else user
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in order)
        return f"mysql+asyncmy://{auth}@{hosts}/{database}?charset=utf8mb4"

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if self.keep_data:
                node.stop()
            else:  # the data goes anyway: no need for each node's clean leave (seconds each)
                node.kill()
        if not self.keep_data:
            shutil.rmtree(self.root, ignore_errors=True)
