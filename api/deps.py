"""Annotated dependencies, so handlers read as what they need rather than how to get it."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from api.errors import ApiError
from core import access
from core.access import Principal
from core.counts import CountReader
from core.runtime import Runtime
from core.settings import Settings


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


async def require_project(runtime: Runtime, key: str | None) -> int:
    """The project of an ingest key (X-Faultline-Key, or a Sentry DSN's key)."""
    if not key:
        raise ApiError(401, "missing_key", "send the project's ingest key in the X-Faultline-Key header")
    pid = await runtime.lookup_project(key)
    if pid is None:
        raise ApiError(401, "invalid_key", "unknown ingest key")
    return pid


def authorize(settings: Settings, authorization: str | None, admin_only: bool) -> Principal:
    """The one token check (core/access.py): the caller's Principal, or a 401 that says which token to send."""
    wanted = "admin token" if admin_only else "admin or dashboard token"
    principal = access.authenticate(settings, access.bearer(authorization))
    if principal is None or (admin_only and principal.role != "admin"):
        code, message = ("invalid_token", f"invalid token: send the {wanted}") if access.bearer(authorization) \
            else ("missing_token", f"send 'Authorization: Bearer <{wanted}>'")
        raise ApiError(401, code, message, headers={"WWW-Authenticate": "Bearer"})
    return principal


async def admin(runtime: RuntimeDep, authorization: Annotated[str | None, Header()] = None) -> Principal:
    return authorize(runtime.settings, authorization, admin_only=True)


async def reader(request: Request, runtime: RuntimeDep,
                 authorization: Annotated[str | None, Header()] = None) -> Principal:
    """Read-only routes: the admin token, or the dashboard token (limited to its projects, if scoped). A list
    needs `project_id` in the scope; one object (a path parameter) is checked by its handler, which alone
    knows the object's project (ReaderDep + `principal.may_see`)."""
    principal = authorize(runtime.settings, authorization, admin_only=False)
    if principal.projects is not None and not request.path_params:
        pid = request.query_params.get("project_id", "")
        if not pid.isdigit() or not principal.may_see(int(pid)):
            raise ApiError(403, "forbidden", "this dashboard token reads GET /errors?project_id=<id> only, "
                           f"for projects {sorted(principal.projects)}")
    return principal


ReaderDep = Annotated[Principal, Depends(reader)]

