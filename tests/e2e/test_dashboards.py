"""Every metric a Grafana panel queries is exported by the real processes, and Prometheus can find them.

One small real stack for the module (1 API node behind nginx, 1 worker, 1 scheduler, SQLite): traffic
that produces every kind of sample (accepted events, a 429 from a tiny limit, a worker batch, a count
sync), then each process's /metrics is scraped directly, as Prometheus does.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from faultline.services import free_port, require, wait_http_ok
from faultline.stack import Stack
from tests.conftest import STACK_DRAIN_DELAY
from tests.e2e.stack_checks import module_stack

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "faultline.json"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset"}
# What the dashboard must show, as words that must appear in a panel title.
REQUIRED_PANELS = ["request rate", "p95", "redis", "db latency", "event-loop lag", "queue depth", "age",
                   "job outcomes", "dead letters", "memory per process", "rate-limit"]


def panel_exprs() -> dict[str, list[str]]:
    dash = json.loads(DASHBOARD.read_text())
    return {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in dash["panels"] if p["type"] != "row"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or labels."""
    expr = re.sub(r'"[^"]*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    names = {m[1] for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", expr) if not m[2]}  # not f(
    return names - PROMQL_WORDS


def exported(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"FAULTLINE_RATE_LIMIT_ENABLED": "true", "FAULTLINE_RATE_LIMITS": "short:5/s,medium:1000/m",
           "FAULTLINE_DRAIN_DELAY": STACK_DRAIN_DELAY}  # its nodes stop only at teardown
    with module_stack(tmp_path_factory.mktemp("stack"), "test_dashboards", nodes=1, workers=1, schedulers=1,
                      db="sqlite", env=env) as (st, _lines):
        yield st


def scrape_all(st: Stack) -> dict[str, set[str]]:
    ports = {**st.node_ports, **st.metrics_ports}
    return {name: exported(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
            for name, port in ports.items()}


def test_names_are_parsed_from_promql() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, op) (rate(redis_operation_duration_seconds_bucket{a="b"}[30s])))'
    assert metric_names(expr) == {"redis_operation_duration_seconds_bucket"}
    assert metric_names("max(faultline_queue_depth) + max(x_total)") == {"faultline_queue_depth", "x_total"}


def test_dashboard_has_the_required_panels() -> None:
    titles = " | ".join(panel_exprs()).lower()
    missing = [word for word in REQUIRED_PANELS if word not in titles]
    assert not missing, f"no panel for {missing}; titles: {titles}"


def test_every_panel_metric_is_exported(stack: Stack) -> None:
    headers = {"X-Faultline-Key": stack.ingest_key}

    def post(i: int) -> int:
        return httpx.post(f"{stack.url}/errors/log", json={"message": f"boom {i}", "service": "dash"},
                          headers=headers, timeout=10).status_code

    with ThreadPoolExecutor(20) as pool:  # a burst of 20 within one second: over the 5/s tier
        statuses = list(pool.map(post, range(20)))
    assert 202 in statuses and 429 in statuses, statuses  # an accepted event and a limiter refusal
    wanted = {name for exprs in panel_exprs().values() for e in exprs for name in metric_names(e)}
    deadline = time.monotonic() + 30
    while True:  # the worker's batch and the scheduler's sync land within a few seconds
        by_process = scrape_all(stack)
        everything = set().union(*by_process.values())
        missing = wanted - everything
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, f"panels query metrics nobody exports: {sorted(missing)}"
    # workers and the scheduler really serve their own /metrics (not only the API node)
    assert "faultline_jobs_total" in by_process["worker-2"]
    assert "faultline_process_resident_memory_bytes" in by_process["scheduler-1"]


def test_prometheus_finds_every_process_where_the_stack_writes_targets(stack: Stack) -> None:
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for job in ("faultline-api", "faultline-workers"):
        [path] = jobs[job]["file_sd_configs"][0]["files"]
        # paths are relative to the config file; `faultline up` runs the stack in .faultline/
        assert (REPO / "deploy" / "prometheus" / path).resolve().parent == (REPO / ".faultline" /
                                                                            "prometheus-targets").resolve()
    written = stack.base / "prometheus-targets"
    groups = [g for f in ("api.json", "workers.json") for g in json.loads((written / f).read_text())]
    assert {g["labels"]["process"] for g in groups} == {*stack.node_ports, *stack.metrics_ports}
    for group in groups:
        [target] = group["targets"]
        assert httpx.get(f"http://{target}/metrics", timeout=5).status_code == 200


@pytest.fixture
def prometheus(stack: Stack, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus (Debian's package) scraping the stack every second with deploy/prometheus's config,
    its file_sd paths pointed at the targets this stack wrote."""
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    for job in config["scrape_configs"]:
        for sd in job.get("file_sd_configs", []):
            sd["files"] = [str(stack.base / "prometheus-targets" / Path(f).name) for f in sd["files"]]
            sd["refresh_interval"] = "1s"
    port = free_port()
    config["scrape_configs"] = [j for j in config["scrape_configs"] if j["job_name"] != "prometheus"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    binary = require("prometheus", "prometheus")
    with (tmp_path / "prometheus.log").open("w") as log:
        proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/-/ready", timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def promql(base: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]  # type: ignore[no-any-return]


def test_prometheus_evaluates_every_panel_query_with_data(stack: Stack, prometheus: str) -> None:
    """Every query of the Grafana dashboard, evaluated by a real Prometheus over live traffic, returns a series
    with a number (not NaN: a quantile of no requests is NaN), and the totals agree with the database."""
    headers = {"X-Faultline-Key": stack.ingest_key}
    sent = {"stop": False}

    def post(i: int) -> None:
        httpx.post(f"{stack.url}/errors/log", json={"message": f"PromError {i % 7}", "service": "prom"},
                   headers=headers, timeout=10)

    def traffic() -> None:  # bursts of 8 in parallel against the 5/s tier: accepted events and 429s, all along
        with ThreadPoolExecutor(8) as pool:
            while not sent["stop"]:
                list(pool.map(post, range(8)))
                # a 4xx that is not the limiter's
                httpx.post(f"{stack.url}/errors/log", json={"mesage": "typo"}, headers=headers, timeout=10)
                time.sleep(0.5)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    exprs = [e for es in panel_exprs().values() for e in es]
    try:
        deadline = time.monotonic() + 45
        while True:  # until every target has been scraped a few times under load
            empty = [e for e in exprs if not any(math.isfinite(float(s["value"][1])) for s in promql(prometheus, e))]
            if not empty or time.monotonic() > deadline:
                break
            time.sleep(1)
    finally:
        sent["stop"] = True
        thread.join(timeout=10)
    assert not empty, f"panel queries with no data from a live stack: {empty}"
    up = promql(prometheus, "up")
    assert {s["metric"]["process"] for s in up} == {*stack.node_ports, *stack.metrics_ports}
    assert all(s["value"][1] == "1" for s in up), up

    def api_total() -> int:  # every group of the stack (this module's tests make fewer than 500)
        return sum(g["count"] for g in httpx.get(f"{stack.url}/errors", params={"limit": 500},
                                                 headers={"Authorization": f"Bearer {stack.admin_token}"},
                                                 timeout=10).json()["items"])

    def prom_accepted() -> float:
        [sample] = promql(prometheus, 'sum(faultline_events_total{outcome="accepted"})')
        return float(sample["value"][1])

    # what Prometheus adds up over every process = what the read API counts (exact), once a scrape is fresh
    deadline = time.monotonic() + 15
    while (pair := (prom_accepted(), api_total()))[0] != pair[1] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert pair[0] == pair[1] > 0, pair
