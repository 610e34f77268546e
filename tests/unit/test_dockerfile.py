"""The Dockerfile, checked without a Docker engine (none runs here): it copies only paths that exist in the
build context, runs only commands the project or its base images provide, installs exactly the locked
dependencies, runs as non-root, and its entry point is the `faultline` CLI the manifests call.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest

from faultline.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
# What the two base images ship (python:3.11-slim, node:20-slim) plus what the Dockerfile installs.
KNOWN_EXECUTABLES = {"python", "pip", "useradd", "npm"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def ignored(path: str) -> bool:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)


def tracked(path: str) -> bool:
    out = subprocess.run(["git", "ls-files", "--", path], cwd=REPO, capture_output=True, text=True, check=True)
    return bool(out.stdout.strip())


def test_copy_sources_exist_in_the_build_context() -> None:
    copies = [args for word, args in instructions() if word == "COPY"]
    assert copies
    for args in copies:
        parts = shlex.split(args)
        if parts[0].startswith("--from="):
            continue  # from the assets stage, checked below
        for source in parts[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: no such path"
            assert tracked(source), f"COPY {source}: not in git, a clean checkout would not have it"
            assert not ignored(source), f"COPY {source}: excluded by .dockerignore"


def test_assets_stage_builds_what_the_app_stage_copies() -> None:
    stage_copy = next(args for word, args in instructions() if word == "COPY" and args.startswith("--from="))
    source = shlex.split(stage_copy)[1]
    package = json.loads((REPO / "package.json").read_text())
    assert source.startswith("/src/node_modules/socket.io-client/")
    assert "socket.io-client" in package["dependencies"]
    assert (REPO / "package-lock.json").exists()  # `npm ci` needs the lock


def test_every_package_the_app_imports_is_a_copied_package() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {shlex.split(args)[0] for word, args in instructions()
              if word == "COPY" and not args.startswith("--from=")}
    assert packages <= copied, f"packages not copied: {packages - copied}"


def test_run_steps_use_only_known_commands_and_locked_installs() -> None:
    runs = [args for word, args in instructions() if word == "RUN"]
    for run in runs:
        for step in re.split(r"&&|;", run):
            argv = shlex.split(step)
            assert argv[0] in KNOWN_EXECUTABLES, f"RUN {argv[0]}: not provided by the base image or project"
            if argv[0] == "pip":
                assert argv[:2] == ["pip", "install"] and "--constraint" in argv, step
                assert argv[argv.index("--constraint") + 1] == "requirements.lock"
            if argv[0] == "npm":
                assert argv[1] == "ci", "npm ci installs exactly package-lock.json"


def test_runs_as_a_non_root_user_matching_the_manifests() -> None:
    users = [args for word, args in instructions() if word == "USER"]
    assert users and users[-1].split(":")[0] == "10001"  # runAsUser in deploy/k8s


def test_entrypoint_is_the_faultline_cli() -> None:
    entry = json.loads(next(args for word, args in instructions() if word == "ENTRYPOINT"))
    cmd = json.loads(next(args for word, args in instructions() if word == "CMD"))
    assert entry == ["faultline"]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["faultline"] == "faultline.cli:main"
    assert build_parser().parse_args(cmd).func.__name__ == "cmd_api"


@pytest.mark.parametrize("must_ignore", [".git", ".venv", ".faultline", "node_modules", "test-artifacts"])
def test_dockerignore_keeps_local_state_out(must_ignore: str) -> None:
    assert ignored(must_ignore)
