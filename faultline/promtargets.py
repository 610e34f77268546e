"""Prometheus file_sd targets for a running local stack: every API node and every worker/scheduler.

Scraped directly, never through nginx: behind least_conn each scrape would land on a random node and a
node's series would mix with the others'. `faultline up` writes them to .faultline/prometheus-targets/,
which deploy/prometheus/prometheus.yml reads (Prometheus re-reads the files when they change, so node
restarts on new ports are picked up without restarting Prometheus).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def targets(node_ports: dict[str, int], metrics_ports: dict[str, int],
            host: str = "127.0.0.1") -> dict[str, Any]:
    api = [{"targets": [f"{host}:{port}"], "labels": {"process": name, "role": "api"}}
           for name, port in sorted(node_ports.items())]
    workers = [{"targets": [f"{host}:{port}"],
                "labels": {"process": name, "role": name.rsplit("-", 1)[0]}}
               for name, port in sorted(metrics_ports.items())]
    return {"api.json": api, "workers.json": workers}


def write(directory: Path, node_ports: dict[str, int], metrics_ports: dict[str, int]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, groups in targets(node_ports, metrics_ports).items():
        tmp = directory / f".{name}.tmp"
        tmp.write_text(json.dumps(groups, indent=1))
        os.replace(tmp, directory / name)  # atomic: Prometheus never reads half a file
