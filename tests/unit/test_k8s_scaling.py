"""deploy/k8s beyond the core Kubernetes schemas: the KEDA and prometheus-operator objects against their CRDs
(vendored in deploy/k8s/crds/, as strict as kubectl's field validation: an unknown field fails), and the
autoscaling bounds against what the database can take.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import jsonschema
import pytest
import yaml

from core.settings import Settings
from faultline.cli import build_parser
from tests.unit.k8s_render import K8S, OVERLAYS, by_kind, pod_specs, render

CRDS = K8S / "crds"
# MariaDB max_connections the bounds are sized for (base/worker-scaledobject.yaml, docs/kubernetes.md).
DB_MAX_CONNECTIONS = 500
DB_RESERVED = 20  # people, backups, monitoring
SHORT_LIVED = 5  # the migration Job and the wait-for-schema initContainers (one connection each, briefly)


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the openAPIV3Schema of that version of the CRD."""
    out = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            api_version = f"{crd['spec']['group']}/{version['name']}"
            out[(api_version, crd["spec"]["names"]["kind"])] = version["schema"]["openAPIV3Schema"]
    return out


def _unknown_fields(obj: Any, schema: dict[str, Any], where: str = "") -> list[str]:
    """Fields the schema does not define (CRD schemas leave additionalProperties open; the API server prunes or,
    with strict field validation, refuses them, so a typo would silently do nothing)."""
    if isinstance(obj, dict) and "properties" in schema:
        found = []
        for key, value in obj.items():
            if key not in schema["properties"]:
                if not (where == "" and key in ("apiVersion", "kind", "metadata")):
                    found.append(f"{where}.{key}")
                continue
            found += _unknown_fields(value, schema["properties"][key], f"{where}.{key}")
        return found
    if isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        return [f for k, v in obj.items() for f in _unknown_fields(v, schema["additionalProperties"], f"{where}.{k}")]
    if isinstance(obj, list) and "items" in schema:
        return [f for i, v in enumerate(obj) for f in _unknown_fields(v, schema["items"], f"{where}[{i}]")]
    return []


def validate_custom(obj: dict[str, Any]) -> None:
    schema = crd_schemas()[(obj["apiVersion"], obj["kind"])]  # KeyError: a version the CRD does not serve
    jsonschema.Draft7Validator(schema).validate(obj)
    unknown = _unknown_fields(obj, schema)
    if unknown:
        raise jsonschema.ValidationError(f"unknown fields: {unknown}")


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_custom_resources_validate_against_their_vendored_crds(overlay: str) -> None:
    custom = [d for d in render(overlay) if d["kind"] in ("ScaledObject", "PodMonitor")]
    assert {d["kind"] for d in custom} == {"ScaledObject", "PodMonitor"}
    for obj in custom:
        validate_custom(obj)


def test_the_crd_validation_can_fail() -> None:
    [scaled] = by_kind(render("production"), "ScaledObject").values()
    for break_it in (lambda o: o["spec"].update(maxReplicaCount="twenty"),  # wrong type
                     lambda o: o["spec"].update(maxReplicas=20),  # the HPA's field name: unknown here
                     lambda o: o["spec"]["triggers"][0].pop("type"),  # required
                     lambda o: o["spec"]["scaleTargetRef"].update(nme="x")):  # a typo deeper down
        bad = copy.deepcopy(scaled)
        break_it(bad)
        with pytest.raises(jsonschema.ValidationError):
            validate_custom(bad)


def _config(docs: list[dict[str, Any]]) -> Settings:
    [cm] = by_kind(docs, "ConfigMap").values()
    env = {k.removeprefix("FAULTLINE_").lower(): v for k, v in cm["data"].items() if k.startswith("FAULTLINE_")}
    return Settings(**env, admin_token="x" * 32)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_replica_bounds_fit_the_database_connection_limit(overlay: str) -> None:
    """Every process may hold pool + overflow connections (core/db/engine.py: 2 x FAULTLINE_DB_POOL_SIZE); at
    the autoscalers' maximum, plus one surge pod per Deployment in a rollout, all of them fit."""
    docs = render(overlay)
    per_process = 2 * _config(docs).db_pool_size
    deployments = by_kind(docs, "Deployment")
    [hpa] = by_kind(docs, "HorizontalPodAutoscaler").values()
    [scaled] = by_kind(docs, "ScaledObject").values()
    maxima = {"faultline-api": hpa["spec"]["maxReplicas"], "faultline-worker": scaled["spec"]["maxReplicaCount"],
              "faultline-scheduler": deployments["faultline-scheduler"]["spec"]["replicas"]}
    total = DB_RESERVED + SHORT_LIVED
    for name, most in maxima.items():
        [container] = deployments[name]["spec"]["template"]["spec"]["containers"]
        args = build_parser().parse_args(container["command"][1:])
        processes = getattr(args, "workers", 1) if args.func.__name__ == "cmd_api" else 1
        surge = deployments[name]["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        total += (most + surge) * processes * per_process
    assert total <= DB_MAX_CONNECTIONS, f"{total} connections at the replica maxima > {DB_MAX_CONNECTIONS}"
    assert scaled["spec"]["minReplicaCount"] >= 1 and hpa["spec"]["minReplicas"] >= 2


def test_workers_scale_on_the_backlog_and_its_age() -> None:
    [scaled] = by_kind(render("production"), "ScaledObject").values()
    queries = {t["name"]: t["metadata"]["query"] for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"}
    # the gauges the workers export (core/metrics.py), over the namespace the overlay deploys to
    assert "faultline_queue_depth" in queries["backlog"]
    assert "faultline_queue_oldest_age_seconds" in queries["queue-age"]
    assert all('namespace="faultline"' in q and q.startswith("max(") for q in queries.values())


def test_api_pods_are_guaranteed_qos() -> None:
    """requests = limits: the HPA's utilisation is a share of the real capacity, and no memory overcommit."""
    for name, spec in pod_specs(render("production")).items():
        for c in spec["containers"] + spec.get("initContainers", []):
            assert c["resources"]["requests"] == c["resources"]["limits"], f"{name}/{c['name']}"


def test_pod_disruption_budgets_let_unhealthy_pods_go() -> None:
    pdbs = by_kind(render("production"), "PodDisruptionBudget")
    assert set(pdbs) == {"faultline-api", "faultline-worker"}
    assert all(p["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow" for p in pdbs.values())


def test_egress_is_what_each_component_needs() -> None:
    policies = by_kind(render("production"), "NetworkPolicy")

    def ports(name: str) -> set[int]:
        return {p["port"] for rule in policies[name]["spec"].get("egress", []) for p in rule.get("ports", [])}

    for name in ("faultline-api", "faultline-worker", "faultline-scheduler"):
        assert {53, 6379, 3306} <= ports(name), name
    assert {443, 80} <= ports("faultline-worker")  # alert webhooks, to any host
    assert not {443, 80} & (ports("faultline-api") | ports("faultline-scheduler"))
    assert ports("faultline-migrate") == {53, 3306}


def test_config_changes_roll_the_pods() -> None:
    """configMapGenerator: the name carries a hash of the content, and every pod refers to that name."""
    docs = render("production")
    [cm] = by_kind(docs, "ConfigMap")
    assert cm.startswith("faultline-config-") and len(cm) > len("faultline-config-")
    for name, spec in pod_specs(docs).items():
        for c in spec["containers"] + spec.get("initContainers", []):
            refs = {r["configMapRef"]["name"] for r in c["envFrom"] if "configMapRef" in r}
            assert refs == {cm}, f"{name}/{c['name']}"
