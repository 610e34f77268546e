"""A throwaway MariaDB server on a free port and a private data directory (faultline/services.py has the rest)."""

from __future__ import annotations

import os
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from mirakuru import TCPExecutor

from faultline.liveness import Ping, mysql_answers
from faultline.procs import Backoff
from faultline.services import Supervised, free_port, require


@dataclass
class MariaDBServer(Supervised):
    data_dir: Path
    port: int = field(default_factory=free_port)
    # InnoDB redo log: given to the install step too, which would otherwise write its 96 MB default first
    log_file_size: str = "64M"
    proc: TCPExecutor | None = None
    backoff: Backoff = field(default_factory=Backoff)
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0

    def ping(self) -> Ping:
        return mysql_answers("127.0.0.1", self.port, "root", None)

    def url(self, database: str = "faultline", user: str = "root", password: str | None = None) -> str:
        auth = f"{user}:{password}" if password else user
        return f"mysql+asyncmy://{auth}@127.0.0.1:{self.port}/{database}?charset=utf8mb4"

    def start(self) -> MariaDBServer:
        if self.needs_install():
            datadir = self.data_dir / "data"
            datadir.mkdir(parents=True, exist_ok=True)
            self.install(datadir)
        self.proc = TCPExecutor(self.command(), host="127.0.0.1", port=self.port, timeout=60)
        self.proc.start()
        return self

    def install(self, datadir: Path) -> None:
        """The system tables into an empty `datadir` (3-5 s here; the test suite copies one it made once)."""
        subprocess.run(
            [require("mariadb-install-db", "mariadb-server"), "--no-defaults", f"--datadir={datadir}",
             "--auth-root-authentication-method=normal", "--skip-test-db", "--user=" + self.os_user(),
             f"--innodb-log-file-size={self.log_file_size}"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def needs_install(self) -> bool:
        """A fresh data directory: create the system tables first."""
        return not (self.data_dir / "data" / "mysql").exists()

    def os_user(self) -> str:
        """The OS user mariadbd runs as: whoever runs us (Galera's nodes override it)."""
        return _user()

    def command(self) -> list[str]:
        return [require("mariadbd", "mariadb-server"), "--no-defaults", f"--datadir={self.data_dir / 'data'}",
                f"--port={self.port}", "--bind-address=127.0.0.1", f"--socket={self.data_dir / 'mysqld.sock'}",
                "--user=" + self.os_user(), f"--pid-file={self.data_dir / 'mysqld.pid'}", "--skip-log-bin",
                "--max-connections=500",
                # what 500 connections and a 1,000-table cache need, within the hard limit: its default sizing
                # asks for more and prints "Could not increase number of max_open_files" at every start
                "--table-open-cache=1000",
                f"--open-files-limit={min(16384, resource.getrlimit(resource.RLIMIT_NOFILE)[1])}",
                "--innodb-buffer-pool-size=128M", f"--innodb-log-file-size={self.log_file_size}",
                f"--log-error={self.data_dir / 'error.log'}"]

    def create_database(self, name: str, password: str | None = None) -> str:
        """The database, and with `password` a `faultline` user owning it (the URL children get)."""
        self.sql(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
        if not password:
            return self.url(name)
        if not password.replace("-", "").replace("_", "").isalnum():
            raise ValueError("database password: letters, digits, - and _ only")
        self.sql(f"CREATE USER IF NOT EXISTS 'faultline'@'127.0.0.1' IDENTIFIED BY '{password}'; "
                 f"ALTER USER 'faultline'@'127.0.0.1' IDENTIFIED BY '{password}'; "
                 f"GRANT ALL PRIVILEGES ON `{name}`.* TO 'faultline'@'127.0.0.1'")
        self.lock_root()
        return self.url(name, "faultline", password)

    def sql(self, statement: str) -> str:
        """As root over the server's private unix socket (works before and after lock_root())."""
        out = subprocess.run(
            [require("mariadb", "mariadb-client"), "--no-defaults", "--protocol=socket",
             f"--socket={self.data_dir / 'mysqld.sock'}", "-uroot", "-N", "-B", "-e", statement],
            check=True, capture_output=True, text=True)
        return out.stdout

    def lock_root(self) -> None:
        """Root only through the unix socket (the unix_socket plugin: the OS user must be root), never over
        TCP: the port then takes the password-protected `faultline` user only. Skipped when not running as
        root, where socket auth would lock us out of our own server."""
        if os.getuid() != 0:
            return
        self.sql("DELETE FROM mysql.global_priv WHERE User = 'root' AND Host <> 'localhost'; "
                 "FLUSH PRIVILEGES; ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket")

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
