"""Security of the rendered manifests: targeted policy checks that run everywhere, plus a checkov scan.

checkov runs from its own virtualenv (.venv-checkov, `make checkov`): it pins dozens of packages that would
fight the app's own lock. Its accepted exceptions, each with a reason, are in deploy/k8s/.checkov.yaml.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.unit.k8s_render import K8S, REPO, by_kind, pod_specs, render, render_text


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render("production")


def _containers(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(name, spec, c) for name, spec in pod_specs(docs).items()
            for c in spec["containers"] + spec.get("initContainers", [])]


def _long_running(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """The containers that export metrics: every Deployment's main container."""
    return [(name, d["spec"]["template"]["spec"], c) for name, d in by_kind(docs, "Deployment").items()
            for c in d["spec"]["template"]["spec"]["containers"]]


def test_pods_run_as_non_root_with_default_seccomp(docs: list[dict[str, Any]]) -> None:
    for name, spec in pod_specs(docs).items():
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0, name
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name


def test_containers_are_locked_down(docs: list[dict[str, Any]]) -> None:
    for name, _, c in _containers(docs):
        ctx = c["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True, name
        assert ctx["allowPrivilegeEscalation"] is False, name
        assert ctx.get("privileged", False) is False, name
        assert ctx["capabilities"]["drop"] == ["ALL"] and not ctx["capabilities"].get("add"), name


def test_read_only_root_has_writable_tmp_and_metrics_dir(docs: list[dict[str, Any]]) -> None:
    [config] = by_kind(docs, "ConfigMap").values()
    prom = config["data"]["PROMETHEUS_MULTIPROC_DIR"]
    for name, spec, c in _containers(docs):
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        assert "emptyDir" in volumes[mounts["/tmp"]], name
    for name, spec, c in _long_running(docs):  # the migration Job and the schema wait export no metrics
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        assert "emptyDir" in {v["name"]: v for v in spec["volumes"]}[mounts[prom]], name


def test_every_container_has_requests_and_limits(docs: list[dict[str, Any]]) -> None:
    for name, _, c in _containers(docs):
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name}: {kind}"


def test_images_are_pinned(docs: list[dict[str, Any]]) -> None:
    for name, _, c in _containers(docs):
        image = c["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert "@sha256:" in image or (tag and tag != "latest"), f"{name}: {image}"


def test_long_running_containers_have_probes(docs: list[dict[str, Any]]) -> None:
    for name, deployment in by_kind(docs, "Deployment").items():
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            assert "livenessProbe" in c and "startupProbe" in c, name
    api = by_kind(docs, "Deployment")["faultline-api"]["spec"]["template"]["spec"]["containers"][0]
    assert "readinessProbe" in api


def test_namespace_enforces_restricted_pod_security(docs: list[dict[str, Any]]) -> None:
    [ns] = by_kind(docs, "Namespace").values()
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_pod_has_a_network_policy(docs: list[dict[str, Any]]) -> None:
    policies = by_kind(docs, "NetworkPolicy").values()
    # default deny, in and out, for every pod of the namespace; the others open what each component needs
    assert [p["spec"]["policyTypes"] for p in policies if p["spec"]["podSelector"] == {}] == [["Ingress", "Egress"]]
    selected = [p["spec"]["podSelector"]["matchLabels"] for p in policies if p["spec"]["podSelector"]]
    for name, d in [(n, d) for n, d in by_kind(docs, "Deployment").items()] + list(by_kind(docs, "Job").items()):
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert any(sel.items() <= labels.items() for sel in selected), name


def _checkov() -> str:
    local = REPO / ".venv-checkov" / "bin" / "checkov"
    found = str(local) if local.exists() else shutil.which("checkov")
    if not found:
        pytest.fail("checkov is not installed: run `make checkov` (make test does it)")
    return found


def test_checkov_finds_nothing(tmp_path: Path) -> None:
    (tmp_path / "production.yaml").write_text(render_text("production"))
    out = subprocess.run([_checkov(), "-d", str(tmp_path), "--config-file", str(K8S / ".checkov.yaml"),
                          "-o", "json"], capture_output=True, text=True, timeout=600)
    report = json.loads(out.stdout)
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']}" for c in report["results"]["failed_checks"]]
    print(f"\ncheckov: {summary['passed']} passed, {summary['failed']} failed")
    assert summary["passed"] > 100  # it really scanned the workloads
    assert not failed, failed
