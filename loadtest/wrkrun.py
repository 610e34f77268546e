"""Run wrk with loadtest/wrk/ingest.lua and return its figures plus its own CPU use.

wrk is a compiled, event-driven generator: on this 2-core box it needs ~0.2-0.4 cores for ~5k req/s,
where a Python generator would need more than the server. Its CPU comes from wait4()'s rusage, so it
is exact and includes the Lua work per request.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "wrk" / "ingest.lua"


@dataclass
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    ok: int
    rejected_429: int
    errors_5xx: int
    other_status: int
    conn_errors: int  # connect + read + write + timeout, as wrk counts them
    accepted_events: int  # batch mode: sum of "accepted" in the answers
    cpu_seconds: float  # the load generator's own user + system CPU

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def events_per_s(self) -> float:
        return self.accepted_events / self.seconds if self.seconds else 0.0

    @property
    def generator_cores(self) -> float:
        return self.cpu_seconds / self.seconds if self.seconds else 0.0


def parse_output(stdout: str, cpu_seconds: float) -> WrkResult:
    line = next((ln for ln in stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result line:\n{stdout[-2000:]}")
    d = json.loads(line.removeprefix("WRKJSON "))
    return WrkResult(
        requests=d["requests"], seconds=d["duration_us"] / 1e6,
        p50_ms=d["p50_us"] / 1000, p95_ms=d["p95_us"] / 1000, p99_ms=d["p99_us"] / 1000,
        p999_ms=d["p999_us"] / 1000, ok=d["n2xx"], rejected_429=d["n429"], errors_5xx=d["n5xx"],
        other_status=d["nother"], conn_errors=d["connect"] + d["read"] + d["write"] + d["timeout"],
        accepted_events=d["accepted"], cpu_seconds=cpu_seconds)


def wrk_binary() -> str:
    binary = shutil.which("wrk")
    if not binary:
        raise SystemExit("wrk not found: run `sudo apt-get install -y wrk`")
    return binary


def run_argv(argv: list[str], env: dict[str, str] | None = None) -> WrkResult:
    """Run wrk with `argv` (its script prints the WRKJSON line) and return its figures and its own CPU."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{text[-2000:]}")
    return parse_output(text, usage.ru_utime + usage.ru_stime)


def run_wrk(url: str, *, path: str = "/errors/log", key: str = "", batch: int = 0, seconds: float = 8,
            connections: int = 64, threads: int = 2, timeout_s: float = 5) -> WrkResult:
    argv = [wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            f"--timeout={max(1, round(timeout_s))}s",
            "-s", str(SCRIPT), url, "--", path, key, str(batch)]
    return run_argv(argv)
