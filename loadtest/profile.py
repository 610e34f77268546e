"""py-spy on live processes while a bench case runs: a flame graph (SVG) and the top costs per process.

`make bench ARGS="--profile"` runs, after the measured rounds, unmeasured passes of the ingest and batch cases
with py-spy attached (its sampling pauses the target, so the measured rounds never run under it) and writes,
per profiled process, `profile/<case>/<process>.svg` (open it in a browser) and `.txt` (py-spy's collapsed
stacks), and a table of the functions with the largest self and inclusive share of the samples into the report.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# 100 Hz for 10 s gives ~1,000 samples per process: a 1 % share is ~10 samples, enough to rank the top costs.
RATE_HZ = 100


def py_spy() -> str:
    # beside this interpreter first: `make bench` runs .venv/bin/python without the venv on PATH
    beside = Path(sys.executable).parent / "py-spy"
    binary = str(beside) if beside.exists() else shutil.which("py-spy")
    if binary is None:
        raise SystemExit("py-spy not found: it is a dev dependency (make venv installs it)")
    return binary


@dataclass
class Recording:
    name: str
    path: Path
    proc: subprocess.Popen[bytes]


def record(pids: dict[str, int], seconds: float, out: Path, fmt: str) -> list[Recording]:
    """Start py-spy on every pid, writing `fmt` ("flamegraph" -> .svg, "raw" -> .txt). It pauses the target
    for each sample (the non-blocking mode reads torn stacks from a busy process): fine in an unmeasured pass.
    One sampler per process at a time (ptrace), so the SVG and the raw stacks come from two passes."""
    out.mkdir(parents=True, exist_ok=True)
    suffix = ".svg" if fmt == "flamegraph" else ".txt"
    recordings = []
    for name, pid in pids.items():
        path = out / (name.replace("/", "-") + suffix)
        proc = subprocess.Popen([py_spy(), "record", "-r", str(RATE_HZ), "-d", str(max(1, round(seconds))),
                                 "-p", str(pid), "-f", fmt, "-o", str(path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        recordings.append(Recording(name, path, proc))
    return recordings


def _function(frame: str) -> str:
    """'handler (app/views.py:42)' -> 'handler (app/views.py)': one row per function, not per line."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def top_costs(raw: Path, limit: int = 12) -> tuple[int, list[tuple[str, float, float]]]:
    """(samples, [(function, self %, inclusive %)]) ordered by self share, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for function in set(frames):
            inclusive[function] += count
    if not total:
        return 0, []
    rows = [(fn, 100 * n / total, 100 * inclusive[fn] / total) for fn, n in own.most_common(limit)]
    return total, rows


def markdown(raws: list[Recording], case: str) -> str:
    parts = [f"\n## Profile: {case} (py-spy {RATE_HZ} Hz, unmeasured pass; flame graphs beside this report)\n"]
    for rec in raws:
        samples, rows = top_costs(rec.path) if rec.path.exists() else (0, [])
        svg = rec.path.relative_to(rec.path.parents[2]).with_suffix(".svg")
        parts.append(f"\n### {rec.name}: {samples} samples, flame graph [{svg}]({svg})\n\n"
                     "| function | self % | inclusive % |\n|---|---|---|")
        parts += [f"| `{fn}` | {own:.1f} | {inc:.1f} |" for fn, own, inc in rows]
    return "\n".join(parts) + "\n"
