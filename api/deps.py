"""Annotated dependencies, so handlers read as what they need rather than how to get it."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from api.errors import ApiError
from core import access
from core.counts import CountReader
from core.runtime import Runtime


# Every dependency is `async def`: FastAPI runs a plain `def` dependency in a thread pool, a thread hop
# that cost ~20% of an API process's CPU on the ingest path.
async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


async def get_counts(request: Request) -> CountReader:
    state = request.app.state
    if getattr(state, "counts", None) is None:  # one per app: it holds the registered script
        rt = state.runtime
        state.counts = CountReader(rt.redis, rt.engine, rt.keys)
    return state.counts  # type: ignore[no-any-return]


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
CountsDep = Annotated[CountReader, Depends(get_counts)]


async def project_id(runtime: RuntimeDep, x_faultline_key: Annotated[str | None, Header()] = None) -> int:
    return await require_project(runtime, x_faultline_key)


async def require_project(runtime: Runtime, key: str | None) -> int:
    if not key:
        raise ApiError(401, "missing_key", "send the project's ingest key in the X-Faultline-Key header")
    pid = await runtime.lookup_project(key)
    if pid is None:
        raise ApiError(401, "invalid_key", "unknown ingest key")
    return pid


async def admin(runtime: RuntimeDep, authorization: Annotated[str | None, Header()] = None) -> None:
    expected = runtime.settings.admin_token or ""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "missing_token", "send 'Authorization: Bearer <admin token>'",
                       headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise ApiError(401, "invalid_token", "invalid admin token", headers={"WWW-Authenticate": "Bearer"})


async def reader(request: Request, runtime: RuntimeDep,
           authorization: Annotated[str | None, Header()] = None) -> None:
    """Read-only routes: the admin token, or the dashboard token (limited to its projects, if scoped)."""
    token = access.bearer(authorization)
    if not token:
        raise ApiError(401, "missing_token", "send 'Authorization: Bearer <admin or dashboard token>'",
                       headers={"WWW-Authenticate": "Bearer"})
    principal = access.authenticate(runtime.settings, token)
    if principal is None:
        raise ApiError(401, "invalid_token", "invalid token", headers={"WWW-Authenticate": "Bearer"})
    if principal.projects is not None:
        pid = request.query_params.get("project_id", "")
        if request.path_params or not pid.isdigit() or not principal.may_see(int(pid)):
            raise ApiError(403, "forbidden", "this dashboard token reads GET /errors?project_id=<id> only, "
                           f"for projects {sorted(principal.projects)}")


ProjectId = Annotated[int, Depends(project_id)]
Admin = Depends(admin)
Reader = Depends(reader)
