"""The floor: a bare FastAPI app whose ingest routes only read the body and answer 202.

Served by the same gunicorn + uvicorn worker class as an API node (faultline.gunicorn_conf), on the same
number of nodes behind the same nginx template, so `make bench` can say how much of the budget is the
framework and the edge, and how much is our ingest path.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.responses import Response

# Prebuilt: the floor must not pay for JSON encoding, only for what any FastAPI route costs.
_QUEUED = b'{"status":"queued"}'


def create() -> FastAPI:
    app = FastAPI(title="floor")

    @app.post("/errors/log")
    async def log_error(request: Request) -> Response:
        await request.body()
        return Response(_QUEUED, status_code=202, media_type="application/json")

    @app.post("/errors/batch")
    async def log_batch(request: Request) -> Response:
        await request.body()
        return Response(_QUEUED, status_code=202, media_type="application/json")

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app
