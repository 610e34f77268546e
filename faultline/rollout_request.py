"""`faultline rollout` -> SIGHUP -> the running `faultline up` rolls its stack (faultline/rollout.py) and answers.

The request, its progress and its answer go through files in the stack's data directory, tagged with the
request's id, so a second `faultline rollout` never reads the first one's answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil

from faultline.rollout import Rollout, rolling_restart
from faultline.stack import Cancelled, Stack

# `up` writes its pid to <data dir>/up.pid. `faultline rollout` writes a request id to rollout.request
# and sends SIGHUP; `up` runs the rollout between two supervision rounds (never concurrently with
# restarting a crashed child) and writes the outcome, tagged with the id, to rollout.json.
PID_FILE, REQUEST_FILE, RESULT_FILE, PROGRESS_FILE = "up.pid", "rollout.request", "rollout.json", "rollout.progress"


def write_pid(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / PID_FILE).write_text(str(os.getpid()))


def remove_pid(data_dir: Path) -> None:
    (data_dir / PID_FILE).unlink(missing_ok=True)


def run_requested(stack: Stack, data_dir: Path, log: Callable[[str], None] = print,
                  on_done: Callable[[], None] | None = None) -> Rollout:
    """Called by `up` after a SIGHUP. Each progress line also goes to rollout.progress (first line: the
    request id), which `faultline rollout` prints as it grows."""
    request = data_dir / REQUEST_FILE
    rid = request.read_text().strip() if request.exists() else f"sighup-{time.time():.0f}"
    progress = open(data_dir / PROGRESS_FILE, "w")
    progress.write(rid + "\n")
    progress.flush()

    def both(line: str) -> None:
        log(line)
        progress.write(line + "\n")
        progress.flush()

    try:
        result = rolling_restart(stack, both)
        outcome: dict[str, object] = {"id": rid, **result.as_dict()}
    except Cancelled:
        both("rollout: cancelled, the stack is stopping")
        result, outcome = Rollout(), {"id": rid, "ok": False, "error": "cancelled: the stack is stopping"}
    except Exception as exc:  # report, keep the stack running: a half-done rollout still has capacity
        both(f"rollout failed: {exc}")
        result, outcome = Rollout(), {"id": rid, "ok": False, "error": str(exc)}
    finally:
        progress.close()
    if on_done is not None and not stack.cancel.is_set():
        on_done()  # before the answer: whoever waits for it then reads an up-to-date stack.json
    (data_dir / RESULT_FILE).write_text(json.dumps(outcome, indent=2))
    return result


def _new_progress(path: Path, rid: str, shown: int) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    if not lines or lines[0] != rid:
        return []
    return lines[1 + shown:]


def request_rollout(data_dir: Path, timeout: float,
                    progress: Callable[[str], None] | None = None) -> dict[str, object]:
    """`faultline rollout`: signal the running `up`, print its progress lines, wait for its answer."""
    pid_file = data_dir / PID_FILE
    if not pid_file.exists():
        raise SystemExit(f"no running `faultline up` ({pid_file} missing)")
    pid = int(pid_file.read_text())
    try:  # a stale pid file may name a process that is not ours any more: never signal that one
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        cmdline = ""
    if "faultline" not in cmdline or " up" not in cmdline:
        raise SystemExit(f"no running `faultline up` (pid {pid} from {pid_file} is not one)")
    rid = uuid.uuid4().hex
    (data_dir / REQUEST_FILE).write_text(rid)
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    result = data_dir / RESULT_FILE
    shown = 0
    while time.monotonic() < deadline:
        for line in _new_progress(data_dir / PROGRESS_FILE, rid, shown):
            shown += 1
            if progress is not None:
                progress(line)
        if result.exists():
            with contextlib.suppress(ValueError):
                outcome: dict[str, object] = json.loads(result.read_text())
                if outcome.get("id") == rid:
                    for line in _new_progress(data_dir / PROGRESS_FILE, rid, shown):
                        if progress is not None:
                            progress(line)
                    return outcome
        time.sleep(0.2)
    raise SystemExit(f"rollout did not finish within {timeout:.0f}s")
