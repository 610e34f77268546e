"""`faultline up` as a user runs it: foreground, prints credentials only once a request through nginx
worked, serves on --port; the other CLI commands run from the same directory act on THAT stack (through
.faultline/stack.json), never on a Redis that happens to listen on 6379; the stores it starts require
passwords; SIGTERM in the middle of `faultline rollout` stops everything within the shutdown timeout.

One `up` per module (a start costs ~30 s here); the tests run in file order and the last one stops it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.db.engine import make_engine
from core.settings import Settings, sqlite_url
from faultline.bootstrap import ensure_default_project
from faultline.services import RedisServer, free_port

pytestmark = pytest.mark.e2e
SHUTDOWN_TIMEOUT = 10.0
KEY_A, KEY_B = "key-a-saved-by-an-earlier-run-0001", "key-b-set-by-the-user-now-00000002"


@dataclass
class Up:
    proc: subprocess.Popen[str]
    cwd: Path
    env: dict[str, str]
    port: int
    lines: list[str] = field(default_factory=list)

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "faultline", *args], cwd=self.cwd, env=env or self.env,
                              capture_output=True, text=True, timeout=120)

    def output(self) -> str:
        return "".join(self.lines)


def _pump(up: Up) -> None:
    assert up.proc.stdout is not None
    for line in up.proc.stdout:
        up.lines.append(line)


def _wait_banner(up: Up, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while "Ctrl-C stops everything" not in up.output():
        assert up.proc.poll() is None, "faultline up exited early:\n" + up.output()[-4000:]
        assert time.monotonic() < deadline, f"no banner after {timeout:.0f} s:\n" + up.output()[-4000:]
        time.sleep(0.2)


def _prepopulate(cwd: Path, redis_url: str) -> None:
    """An earlier run's data: .faultline/faultline.db whose `default` project has key A only."""
    import asyncio

    settings = Settings(database_url=sqlite_url(cwd / ".faultline"),
                        redis_url=redis_url, key_prefix="earlier-run", admin_token="x" * 20)
    asyncio.run(ensure_default_project(settings, KEY_A))
    asyncio.run(make_engine(settings).dispose())


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Up]:
    cwd = tmp_path_factory.mktemp("cli")
    _prepopulate(cwd, redis_server.url)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTLINE_")}
    env.update({"FAULTLINE_SYNC_INTERVAL": "1", "FAULTLINE_ADMIN_TOKEN": "admin-token-for-the-cli-test",
                "FAULTLINE_INGEST_KEY": KEY_B, "FAULTLINE_DRAIN_DELAY": "1",
                "FAULTLINE_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT), "PYTHONUNBUFFERED": "1",
                # nodes reload their key cache every 1 s, not 10 s: a revoked key is refused sooner, by the
                # same reload (test_cli_commands_act_on_this_stack waits for it)
                "FAULTLINE_PROJECTS_REFRESH": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "faultline", "up", "--port", str(port), "--db", "sqlite",
                             "--nodes", "2", "--workers", "1", "--no-rate-limit"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    handle = Up(proc, cwd, env, port)
    threading.Thread(target=_pump, args=(handle,), daemon=True).start()
    try:
        _wait_banner(handle)
        yield handle
    finally:
        if proc.poll() is None:  # SIGTERM lets `up` stop its children too
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def post(port: int, key: str, message: str) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/errors/log", method="POST",
                                 data=json.dumps({"message": message}).encode(),
                                 headers={"Content-Type": "application/json", "X-Faultline-Key": key})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_banner_key_is_the_one_set_and_works(up: Up) -> None:
    banner = up.output()
    key = banner.split("ingest key  : ", 1)[1].split()[0]
    assert key == KEY_B  # FAULTLINE_INGEST_KEY wins over the saved default project's key A ...
    creds = up.cwd / ".faultline" / "credentials.env"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert f"FAULTLINE_INGEST_KEY={key}" in creds.read_text()
    assert "FAULTLINE_ADMIN_TOKEN=admin-token-for-the-cli-test" in creds.read_text()  # taken from the env
    assert post(up.port, KEY_B, "from the cli test") == 202
    assert post(up.port, KEY_A, "old key still works") == 202  # ... and A stays a key of `default`
    info = up.cwd / ".faultline" / "stack.json"
    assert stat.S_IMODE(info.stat().st_mode) == 0o600


def test_cli_commands_act_on_this_stack(up: Up) -> None:
    created = up.cli("project", "create", "demo")
    assert created.returncode == 0, created.stderr
    demo_key = created.stdout.strip()
    assert post(up.port, demo_key, "from the demo project") == 202  # the key reached this stack's nodes

    listed = up.cli("project", "list")
    assert listed.returncode == 0 and "demo" in listed.stdout and "default" in listed.stdout, listed
    assert demo_key not in listed.stdout  # hints only, never a key

    rotated = up.cli("project", "rotate-key", "demo", "--revoke-old")
    assert rotated.returncode == 0, rotated.stderr
    new_key = rotated.stdout.strip()
    assert post(up.port, new_key, "rotated") == 202
    deadline = time.monotonic() + 25  # each node reloads its key cache every 1 s here (FAULTLINE_PROJECTS_REFRESH)
    refused = 0  # in a row, so that both nodes behind nginx have dropped the key
    while refused < 6 and time.monotonic() < deadline:
        refused = refused + 1 if post(up.port, demo_key, "revoked?") == 401 else 0
        time.sleep(0.2)
    assert refused >= 6, "the revoked key still works on a node"

    status = up.cli("status")
    assert status.returncode == 0, status.stderr
    stackinfo = json.loads((up.cwd / ".faultline" / "stack.json").read_text())
    redis_port = next(p["port"] for p in stackinfo["processes"] if p["name"] == "redis")
    assert redis_port != 6379 and str(redis_port) in status.stdout
    assert "queue" in status.stdout and "worker-" in status.stdout, status.stdout
    beats = [line for line in status.stdout.splitlines() if line.startswith("beat")]
    assert any("scheduler" in line for line in beats) and any("worker" in line for line in beats), beats
    ages = [float(re.search(r"([\d.]+)s ago", line).group(1)) for line in beats]  # type: ignore[union-attr]
    assert all(age < 60 for age in ages), beats  # each process beat or progressed lately (not since 1970)

    checked = up.cli("worker-check")  # no --name: this stack's workers
    assert checked.returncode == 0, checked.stdout + checked.stderr
    dead = up.cli("dlq", "list")
    assert dead.returncode == 0 and "0 dead letter" in dead.stdout, dead

    deleted = up.cli("project", "delete", "demo")
    assert deleted.returncode == 0, deleted.stderr


def test_cli_refuses_without_a_stack(up: Up, tmp_path: Path) -> None:
    """Elsewhere (no stack.json, no explicit URLs): refuse, saying what to do; never write anywhere."""
    env = {**up.env, "FAULTLINE_DATA_DIR": str(tmp_path / "nothing-here")}
    commands = (("project", "create", "lost"), ("dlq", "list"), ("worker-check",), ("status",))
    with ThreadPoolExecutor(len(commands)) as pool:  # four CLI processes side by side: ~1 s of imports each
        results = list(pool.map(lambda args: up.cli(*args, env=env), commands))
    for args, result in zip(commands, results, strict=True):
        assert result.returncode != 0, (args, result.stdout)
        assert "faultline up" in result.stderr and "FAULTLINE_REDIS_URL" in result.stderr, result.stderr
    assert not (tmp_path / "nothing-here").exists()


def test_stack_redis_requires_its_password(up: Up) -> None:
    info = json.loads((up.cwd / ".faultline" / "stack.json").read_text())
    port = next(p["port"] for p in info["processes"] if p["name"] == "redis")
    # refused at once: redis-py's default retry would re-ask 3 times with backoff (~4 s) before raising
    anonymous = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    with redis.Redis.from_url(info["redis_url"], socket_timeout=5) as authed:
        assert authed.ping()
    creds = (up.cwd / ".faultline" / "credentials.env").read_text()
    assert "FAULTLINE_REDIS_PASSWORD=" in creds
    assert creds.split("FAULTLINE_REDIS_PASSWORD=", 1)[1].split()[0] not in up.output()  # never printed


def readme_quickstart() -> list[str]:
    """The shell lines of the README's quick start, between its <!-- quickstart --> markers."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split("<!-- quickstart -->", 1)[1].split("<!-- /quickstart -->", 1)[0]
    body = block.split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in body.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_readme_quick_start_runs_as_written(up: Up) -> None:
    lines = readme_quickstart()
    assert lines[0].startswith("source .faultline/credentials.env")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTLINE_")}  # only what the file gives
    marker = "=== next ==="
    script = f"\necho '{marker}'\n".join(lines)
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=up.cwd, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    outputs = [part.strip() for part in out.stdout.split(marker)]
    assert len(outputs) == len(lines)
    ingest, groups, dashboard = outputs[1], outputs[2], outputs[3]
    accepted = json.loads(ingest)
    assert accepted["status"] == "queued" and len(accepted["fingerprint"]) == 64
    deadline = time.monotonic() + 15
    # the list shows the group's details once a worker wrote its row (milliseconds; a human never sees the gap);
    # the count sync may create the row first, as a count-only placeholder the worker then fills
    while True:
        mine = [g for g in json.loads(groups)["items"] if g["fingerprint"] == accepted["fingerprint"]]
        if (mine and mine[0]["message"] is not None) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
        again = subprocess.run(["bash", "-euo", "pipefail", "-c", f"{lines[0]}\n{lines[2]}"], cwd=up.cwd, env=env,
                               capture_output=True, text=True, timeout=30)
        groups = again.stdout.strip()
    assert mine and mine[0]["message"] == "TypeError: x is undefined" and mine[0]["count"] >= 1
    assert dashboard.startswith(f"http://127.0.0.1:{up.port}/dashboard#token=admin-token-for-the-cli-test")
    with urllib.request.urlopen(dashboard.split("#", 1)[0], timeout=10) as r:  # the page is there
        assert r.status == 200 and b"Faultline" in r.read()


def test_sigterm_mid_rollout_stops_within_the_shutdown_timeout(up: Up) -> None:
    rollout = subprocess.Popen([sys.executable, "-m", "faultline", "rollout"], cwd=up.cwd, env=up.env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while "rollout: starting a replacement" not in up.output():
            assert time.monotonic() < deadline, up.output()[-3000:]
            time.sleep(0.1)
        time.sleep(1.0)  # mid-step: the replacement node is booting
        sent = time.monotonic()
        up.proc.send_signal(signal.SIGTERM)
        up.proc.wait(SHUTDOWN_TIMEOUT + 30)
        took = time.monotonic() - sent
    finally:
        rollout.kill()
        out, _ = rollout.communicate(10)
    assert up.proc.returncode == 0, up.output()[-3000:]
    assert "stopped" in up.output()
    assert "rollout: starting a replacement" in out  # `faultline rollout` printed progress as it happened
    assert took < SHUTDOWN_TIMEOUT + 5, f"stopped {took:.1f}s after SIGTERM"
    print(f"SIGTERM mid-rollout: everything stopped in {took:.1f}s (shutdown timeout {SHUTDOWN_TIMEOUT:.0f}s)")
    assert not (up.cwd / ".faultline" / "stack.json").exists()



def test_a_normal_start_and_ctrl_c_print_no_error_line(tmp_path: Path) -> None:
    """What a user sees of `faultline up` then Ctrl-C: no line with "error" in it when nothing failed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTLINE_")}
    env.update({"FAULTLINE_DRAIN_DELAY": "0.5", "FAULTLINE_SHUTDOWN_TIMEOUT": "5", "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "faultline", "up", "--port", str(free_port()), "--db", "sqlite",
                             "--nodes", "1", "--workers", "1"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    handle = Up(proc, tmp_path, env, 0)
    threading.Thread(target=_pump, args=(handle,), daemon=True).start()
    try:
        _wait_banner(handle)
        time.sleep(2)  # a few beats of every loop
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.5)  # the pump thread reads the last lines
    noisy = [line for line in handle.output().splitlines() if "error" in line.lower()]
    assert not noisy, "\n".join(noisy[:20])
