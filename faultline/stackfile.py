"""<data dir>/stack.json: how the CLI reaches the stack `faultline up` runs in this directory.

Written (mode 0600: it holds the admin token and the store passwords) at start, after restarts and
rollouts, removed at stop. Every other command (project, dlq, worker-check, status) reads it unless
FAULTLINE_REDIS_URL / FAULTLINE_DATABASE_URL say explicitly where to go; with neither it refuses,
rather than write to whatever Redis answers on 6379 or to a fresh SQLite file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from core.settings import DATA_DIR, Settings, get_settings

if TYPE_CHECKING:
    from faultline.stack import Stack

NAME = "stack.json"
EXPLICIT = ("FAULTLINE_REDIS_URL", "FAULTLINE_DATABASE_URL")


def data_dir() -> Path:
    return Path(os.environ.get("FAULTLINE_DATA_DIR") or DATA_DIR)


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def describe(stack: Stack) -> dict[str, Any]:
    settings = stack.settings()
    procs: list[dict[str, Any]] = []
    servers: list[tuple[str, Any]] = [*stack.servers(), ("nginx", stack.nginx)]
    for name, server in servers:
        if server is not None and server.proc is not None and server.proc.process is not None:
            procs.append({"name": name, "role": name.split("-", 1)[0], "pid": server.proc.process.pid,
                          "port": server.port, "restarts": server.restarts})
    for child in stack.children():
        role = child.name.rsplit("-", 1)[0]
        port = stack.node_ports.get(child.name) or stack.metrics_ports.get(child.name)
        procs.append({"name": child.name, "role": role, "pid": child.pid, "port": port,
                      "restarts": child.restarts})
    return {"up_pid": os.getpid(), "url": stack.nginx.url if stack.nginx else None,
            "redis_url": stack.redis.url if stack.redis else None, "database_url": stack.database_url,
            "key_prefix": settings.key_prefix, "admin_token": stack.admin_token, "processes": procs,
            "workers": [c.name for c in stack.workers], "schedulers": [c.name for c in stack.schedulers]}


def write(directory: Path, stack: Stack) -> None:
    write_private(directory / NAME, json.dumps(describe(stack), indent=1))


def remove(directory: Path) -> None:
    (directory / NAME).unlink(missing_ok=True)


def read(directory: Path) -> dict[str, Any] | None:
    """The running stack's description, or None when there is none (no file, or its `up` is gone)."""
    path = directory / NAME
    try:
        info: dict[str, Any] = json.loads(path.read_text())
        cmdline = " ".join(psutil.Process(int(info["up_pid"])).cmdline())
    except (OSError, ValueError, KeyError, psutil.Error):
        return None
    return info if "faultline" in cmdline and " up" in cmdline else None


def cli_settings() -> Settings:
    """Settings for a CLI command: explicit URLs if given, else the stack running in the data dir."""
    if any(os.environ.get(name) for name in EXPLICIT):
        return get_settings()
    directory = data_dir()
    info = read(directory)
    if info is None:
        raise SystemExit(
            f"no running `faultline up` found in {directory.resolve()} (no live {NAME}).\n"
            "Start the stack with `faultline up` in this directory (or set FAULTLINE_DATA_DIR to its data "
            "directory), or set FAULTLINE_REDIS_URL and FAULTLINE_DATABASE_URL to reach another deployment.")
    return Settings(redis_url=info["redis_url"], database_url=info["database_url"], key_prefix=info["key_prefix"],
                    admin_token=info["admin_token"], data_dir=directory)


def stack_members(role: str) -> list[str]:
    """Names of the running stack's processes of `role` ("worker", "scheduler"); [] without a stack."""
    info = read(data_dir())
    return list(info.get(f"{role}s", [])) if info else []
