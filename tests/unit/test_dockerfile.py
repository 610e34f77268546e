"""The Dockerfile, checked without a Docker engine (none runs here): it copies only paths that exist in the
build context, runs only commands the project or its base images provide, installs exactly the locked
(hash-checked) dependencies, runs as non-root in production mode with no default secret, and its entry point
is the `faultline` CLI the manifests call.
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
from pydantic import ValidationError

from core.settings import Settings
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
    sources = [src for word, args in instructions() if word == "COPY" and args.startswith("--from=")
               for src in shlex.split(args)[1:-1]]
    package = json.loads((REPO / "package.json").read_text())
    lock = json.loads((REPO / "package-lock.json").read_text())  # `npm ci` needs the lock
    packages = {m[1] for src in sources if (m := re.match(r"/src/node_modules/((?:@[^/]+/)?[^/]+)/", src))}
    assert packages == {"socket.io-client", "swagger-ui-dist"}, sources
    for name in packages:
        assert name in package["dependencies"]
        assert f"node_modules/{name}" in lock["packages"], f"{name}: not in package-lock.json"
    # the dashboard and /docs serve exactly these files (realtime/dashboard.py)
    assert any(src.endswith("socket.io.min.js") for src in sources)
    assert {"swagger-ui-bundle.js", "swagger-ui.css"} <= {Path(src).name for src in sources}


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
                # either the locked dependencies, every file hash-checked, or the project itself without any
                assert argv[:2] == ["pip", "install"] and "--no-deps" in argv, step
                if "-r" in argv:
                    assert "--require-hashes" in argv and argv[argv.index("-r") + 1] == "requirements.runtime.lock"
                else:
                    assert argv[-1] == ".", step
            if argv[0] == "npm":
                assert argv[1] == "ci", "npm ci installs exactly package-lock.json"
                assert "--ignore-scripts" in argv, "no package's install hook runs in the build"


def _pins(lock: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a `uv pip compile --generate-hashes` file."""
    text = re.sub(r"\\\n", " ", (REPO / lock).read_text())
    return {m[1].lower(): (m[2], len(re.findall(r"--hash=sha256:[0-9a-f]{64}", m[3])))
            for m in re.finditer(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+)(.*)$", text, re.M)}


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements.runtime.lock"])
def test_locks_pin_every_package_with_hashes(lock: str) -> None:
    pins = _pins(lock)
    assert len(pins) > 20
    unhashed = [name for name, (_, hashes) in pins.items() if hashes == 0]
    assert not unhashed, f"{lock}: no hash for {unhashed}"


def test_runtime_lock_is_the_full_lock_minus_dev_tools() -> None:
    full, runtime = _pins("requirements.lock"), _pins("requirements.runtime.lock")
    assert {n: v for n, (v, _) in runtime.items()} == {n: full[n][0] for n in runtime}, "versions differ"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for dep in pyproject["project"]["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.\-]+", dep)[0].lower()  # type: ignore[index]
        assert name in runtime, f"{name}: a runtime dependency missing from the image's lock"
    assert "pytest" in full and "pytest" not in runtime


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in instructions():
        if word == "FROM":
            env = {}  # each stage starts afresh; the last one is the image
        elif word == "ENV":
            env.update(dict(part.split("=", 1) for part in shlex.split(args)))
    return env


def test_image_runs_in_production_without_any_default_secret() -> None:
    env = _image_env()
    assert env["FAULTLINE_ENV"] == "production"
    for name in ("ADMIN_TOKEN", "DASHBOARD_TOKEN", "INGEST_KEY", "DATABASE_URL", "REDIS_URL"):
        assert f"FAULTLINE_{name}" not in env, f"the image must not carry FAULTLINE_{name}"
    cmd = json.loads(next(args for word, args in instructions() if word == "CMD"))
    assert env["FAULTLINE_BIND_HOST"] == build_parser().parse_args(cmd).host  # what the CMD listens on
    settings = {k.removeprefix("FAULTLINE_").lower(): v for k, v in env.items() if k.startswith("FAULTLINE_")}
    with pytest.raises(ValidationError, match="ADMIN_TOKEN"):
        Settings(**settings)  # the image alone does not start: the token must come from outside
    with pytest.raises(ValidationError):
        Settings(**settings, admin_token="dev-admin-token")
    assert Settings(**settings, admin_token="t" * 32).env == "production"


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
