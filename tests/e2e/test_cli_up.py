"""`faultline up` as a user runs it: foreground, prints credentials, serves on --port, exits 0 on SIGINT."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from faultline.services import free_port

pytestmark = pytest.mark.e2e


def test_faultline_up_serves_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTLINE_")}
    env.update({"FAULTLINE_SYNC_INTERVAL": "1", "FAULTLINE_ADMIN_TOKEN": "admin-token-for-the-cli-test"})
    proc = subprocess.Popen([sys.executable, "-m", "faultline", "up", "--port", str(port), "--db", "sqlite",
                             "--nodes", "2", "--workers", "1"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "faultline up exited early:\n" + "".join(lines[-40:])
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        banner = "".join(lines)
        key = banner.split("ingest key  : ", 1)[1].split()[0]
        creds = tmp_path / ".faultline" / "credentials.env"
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600
        assert f"FAULTLINE_INGEST_KEY={key}" in creds.read_text()
        assert "FAULTLINE_ADMIN_TOKEN=admin-token-for-the-cli-test" in creds.read_text()  # taken from the env
        req = urllib.request.Request(f"http://127.0.0.1:{port}/errors/log", method="POST",
                                     data=json.dumps({"message": "from the cli test"}).encode(),
                                     headers={"Content-Type": "application/json", "X-Faultline-Key": key})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 202
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out[-3000:]
        assert "stopped" in out
    finally:
        if proc.poll() is None:  # SIGTERM lets `up` stop its children too
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
