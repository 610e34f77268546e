"""Several MySQL/MariaDB hosts in one URL: `mysql+asyncmy://user:pw@h1:3306,h2:3306,h3:3306/faultline`.

asyncmy connects to one host. For a Galera cluster (or a managed MySQL with a standby endpoint) the engine
factory gives the pool a connector that tries the hosts in turn: it starts with the host that worked last
(so a process stays on one node and its transactions do not certify against its own earlier ones on
another node), skips a host that refuses or times out, and skips a Galera node that is up but not part of
the primary component (`wsrep_ready` OFF: it would answer every query with error 1047). With the pool's
pre-ping, a connection to a node that died is dropped at checkout and the next one goes to a live node.
One host = no failover: the URL is used as it is.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.engine import URL, make_url

log = logging.getLogger("faultline.db")
# user:password@ host list / rest; the host list is "host[:port]" items separated by commas
_NETLOC = re.compile(r"^(?P<head>[^:/]+://(?:[^@/]*@)?)(?P<hosts>[^/?]*)(?P<tail>.*)$", re.S)
# Seconds to wait for one host before trying the next: a host that is down on a real network answers
# nothing (no RST), and asyncmy's default of 10 s per host would stall every reconnect for that long.
CONNECT_TIMEOUT = 3


def split_hosts(url: str) -> tuple[str, list[tuple[str, int | None]]]:
    """("...@h1:1,h2:2/db") → ("...@h1:1/db", [("h1", 1), ("h2", 2)]); one host → (url, [])."""
    m = _NETLOC.match(url)
    if m is None or "," not in m["hosts"]:
        return url, []
    hosts: list[tuple[str, int | None]] = []
    for item in m["hosts"].split(","):
        host, _, port = item.strip().partition(":")
        if not host:
            raise ValueError(f"database URL: empty host in {m['hosts']!r}")
        hosts.append((host, int(port) if port else None))
    first = m["hosts"].split(",")[0].strip()
    return f"{m['head']}{first}{m['tail']}", hosts


class HostList:
    """The pool's connector over several hosts (SQLAlchemy's `async_creator`)."""

    def __init__(self, url: URL, hosts: list[tuple[str, int | None]]) -> None:
        self.hosts = hosts
        self.current = 0
        dialect = url.get_dialect(_is_async=True)()
        self.connect_args = [dialect.create_connect_args(url.set(host=h, port=p))[1] for h, p in hosts]
        for kw in self.connect_args:
            kw.setdefault("connect_timeout", CONNECT_TIMEOUT)

    async def connect(self) -> Any:
        import asyncmy  # the driver of mysql+asyncmy URLs, the only scheme this connector is made for

        errors: list[str] = []
        for step in range(len(self.hosts)):
            i = (self.current + step) % len(self.hosts)
            try:
                conn = await asyncmy.connect(**self.connect_args[i])
            except Exception as exc:
                errors.append(f"{self._name(i)}: {exc}")
                continue
            if await _galera_ready(conn):
                if i != self.current:
                    log.warning("database: connected to %s (%s)", self._name(i), "; ".join(errors) or "switched")
                self.current = i
                return conn
            errors.append(f"{self._name(i)}: Galera node not ready (not in the primary component)")
            conn.close()
        raise ConnectionRefusedError(f"no database host answered: {'; '.join(errors)}")

    def _name(self, i: int) -> str:
        host, port = self.hosts[i]
        return f"{host}:{port}" if port else host


async def _galera_ready(conn: Any) -> bool:
    """False only for a Galera node that says it is not ready; any other server (no such variable) is ready."""
    async with conn.cursor() as cur:
        await cur.execute("SHOW GLOBAL STATUS LIKE 'wsrep_ready'")
        row = await cur.fetchone()
    return row is None or str(row[1]).upper() == "ON"


def failover_creator(url: str) -> tuple[str, Callable[[], Awaitable[Any]] | None]:
    """The URL for the engine and, when it lists several hosts, the connector that fails over along them."""
    single, hosts = split_hosts(url)
    if not hosts:
        return url, None
    parsed = make_url(single)
    if parsed.get_backend_name() not in ("mysql", "mariadb") or parsed.get_driver_name() != "asyncmy":
        raise ValueError("several database hosts in one URL are supported for mysql+asyncmy:// only")
    return single, HostList(parsed, hosts).connect
