"""Render deploy/k8s with kustomize (offline) for the manifest tests."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = {"base": K8S / "base", "production": K8S / "overlays" / "production",
            "edge-retries": K8S / "overlays" / "edge-retries"}


def kustomize_command() -> list[str]:
    """`kustomize build`, else `kubectl kustomize` (kubectl >= 1.21 embeds kustomize v4+)."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    kubectl = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if kubectl:  # the machine's, or the venv's (Makefile `kubectl` target)
        return [kubectl, "kustomize"]
    pytest.fail("neither kustomize nor kubectl is installed: the manifests cannot be rendered")


@functools.cache
def render_text(name: str) -> str:
    out = subprocess.run([*kustomize_command(), str(OVERLAYS[name])], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def render(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render_text(name)) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Workload name -> pod spec, for Deployments and Jobs."""
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "Job")}
