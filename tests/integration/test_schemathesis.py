"""schemathesis over the OpenAPI schema of a real API node (gunicorn + uvicorn, real Redis, SQLite).

Every operation the schema lists is tested (discovered from /openapi.json, so routes added later are
covered without touching this file), with positive and negative data, each case sent twice: as generated
(usually without credentials, or with garbage ones) and with valid credentials (ingest key + admin token).
One property, for every route: no 5xx, and an answer within the client timeout.
Kept bounded (a few examples per operation) so the file runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from core.settings import Settings
from faultline.services import free_port, wait_http_ok
from tests.integration.conftest import INGEST_KEY, prepare

TIMEOUT_S = 5.0  # a hang is a failure
EXAMPLES = 12  # per operation and mode; the whole file stays under a minute on the shared 2-core machine


@pytest.fixture
def node(make_settings: Any, spawn: Any) -> Iterator[tuple[str, Settings]]:
    s: Settings = make_settings(drain_delay=0)  # the node is stopped only at teardown, with nothing left to serve
    asyncio.run(prepare(s))
    port = free_port()
    spawn("api-schema", ["api", "--port", str(port)], s)
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    wait_http_ok(f"{base}/health/ready", timeout=60)
    print(f"node ready after {time.monotonic() - started:.1f}s")
    yield base, s


def _schema_documents_ingest(base: str, s: Settings) -> None:
    doc = requests.get(f"{base}/openapi.json", timeout=TIMEOUT_S).json()
    log = doc["paths"]["/errors/log"]["post"]
    batch = doc["paths"]["/errors/batch"]["post"]
    assert log["requestBody"]["content"]["application/json"]["example"]["message"]
    event = doc["components"]["schemas"]["LogErrorIn"]
    assert event["additionalProperties"] is False and {"message", "stack", "context"} <= set(event["properties"])
    assert doc["components"]["schemas"]["BatchIn"]["properties"]["events"]["maxItems"] == s.batch_max_events
    assert {"202", "401", "413", "422"} <= set(batch["responses"])
    # the example in the schema is accepted as documented
    r = requests.post(f"{base}/errors/log", json=log["requestBody"]["content"]["application/json"]["example"],
                      headers={"X-Faultline-Key": INGEST_KEY}, timeout=TIMEOUT_S)
    assert r.status_code == 202, r.text


def test_no_route_answers_5xx_or_hangs(node: tuple[str, Settings]) -> None:
    base, s = node
    _schema_documents_ingest(base, s)
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    creds = {"X-Faultline-Key": INGEST_KEY, "Authorization": f"Bearer {s.admin_token}"}
    tested: list[str] = []
    no_negative: list[str] = []

    def send(case: Any) -> None:
        for headers in (None, {**(case.headers or {}), **creds}):
            response = case.call(base_url=base, headers=headers, timeout=TIMEOUT_S)
            assert response.status_code < 500, (case.method, case.formatted_path, response.status_code,
                                                response.text[:500])
            if response.status_code >= 400:  # every refusal is a JSON body
                ctype = response.headers.get("content-type") or response.headers.get("Content-Type") or [""]
                assert ctype[0].startswith("application/json"), (case.method, case.formatted_path, response.text)

    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        tested.append(f"{operation.method.upper()} {operation.path}")
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run = given(operation.as_strategy(generation_mode=mode))(send)
            try:
                settings(max_examples=EXAMPLES, deadline=None, database=None,
                         suppress_health_check=list(HealthCheck))(run)()
            except Unsatisfiable:  # nothing in this operation can be made invalid (e.g. no parameters)
                assert mode is GenerationMode.NEGATIVE, tested[-1]
                no_negative.append(tested[-1])
    assert {"POST /errors/log", "POST /errors/batch", "GET /errors"} <= set(tested), tested
    print(f"schemathesis: {len(tested)} operations in {time.monotonic() - started:.1f}s: {tested}; "
          f"no negative data for {no_negative}")
