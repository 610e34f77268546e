"""The browser pages (/dashboard, /docs, their static files): own-origin assets only, a CSP everywhere."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from core.settings import Settings
from realtime.dashboard import STATIC

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", re.I)


def csp_of(headers: Any) -> dict[str, set[str]]:
    policy = headers["content-security-policy"]
    return {d.split()[0]: set(d.split()[1:]) for d in policy.split(";") if d.strip()}


def assert_locked_down(csp: dict[str, set[str]]) -> None:
    assert csp["default-src"] == {"'none'"}
    assert csp["script-src"] == {"'self'"}  # no 'unsafe-inline', no 'unsafe-eval', no CDN
    assert "'unsafe-inline'" not in csp["style-src"]
    assert csp["frame-ancestors"] == {"'none'"} and csp["base-uri"] == {"'none'"}


@pytest.mark.parametrize("path", ["/dashboard", "/docs", "/dashboard/groups/" + "ab" * 32])
async def test_pages_load_only_own_files_under_a_strict_csp(
        make_settings: Callable[..., Settings], client_factory: Any, path: str) -> None:
    async with client_factory(make_settings()) as c:
        r = await c.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert_locked_down(csp_of(r.headers))
        assert r.headers["x-content-type-options"] == "nosniff"
        assert not EXTERNAL.search(r.text), "the page references another origin"
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", r.text), "inline script"
        for asset in re.findall(r"""(?:src|href)="(/[^"]+)\"""", r.text):
            got = await c.get(asset)
            assert got.status_code == 200, f"{path} needs {asset}: {got.status_code} (run `make node`)"


async def test_static_copies_of_the_pages_carry_the_csp_too(
        make_settings: Callable[..., Settings], client_factory: Any) -> None:
    async with client_factory(make_settings()) as c:
        for name in ("dashboard.html", "docs.html", "dashboard.js", "group.html", "group.js", "token.js"):
            r = await c.get(f"/dashboard/static/{name}")
            assert r.status_code == 200
            assert_locked_down(csp_of(r.headers))
    for page in ("dashboard.html", "docs.html", "group.html"):  # and inside the file, for a copy served from elsewhere
        meta = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', (STATIC / page).read_text())
        assert meta and "script-src 'self';" in meta[1] and "default-src 'none'" in meta[1], page


async def test_cdn_pages_are_gone_and_the_schema_stays(
        make_settings: Callable[..., Settings], client_factory: Any) -> None:
    async with client_factory(make_settings()) as c:
        assert (await c.get("/redoc")).status_code == 404  # FastAPI's version loads redoc from a CDN
        assert (await c.get("/docs/oauth2-redirect")).status_code == 404
        schema = (await c.get("/openapi.json")).json()
        assert "/errors" in schema["paths"] and "/docs" not in schema["paths"]


def test_dashboard_keeps_no_token_on_disk() -> None:
    def code(name: str) -> str:
        js = (STATIC / name).read_text()
        return "\n".join(line.split("//")[0] for line in js.splitlines())  # comments may mention it

    token = code("token.js")  # the one place the dashboard pages keep their token
    assert "localStorage.setItem" not in token and "localStorage.getItem" not in token
    assert "sessionStorage.setItem" in token
    assert "history.replaceState" in token  # the #token= fragment leaves the address bar
    for page, script in (("dashboard.html", "dashboard.js"), ("group.html", "group.js")):
        assert "localStorage" not in code(script) and "sessionStorage" not in code(script)
        assert "faultlineToken" in code(script)
        html = (STATIC / page).read_text()
        assert html.index("/token.js") < html.index(f"/{script}")


async def test_the_bare_url_leads_to_the_dashboard(make_settings: Callable[..., Settings], client_factory: Any) -> None:
    async with client_factory(make_settings()) as c:
        r = await c.get("/", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/dashboard"
        assert (await c.get("/nope")).json()["error"] == "not_found"  # unknown paths: the JSON 404
