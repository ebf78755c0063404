"""Property-based API tests generated from the OpenAPI schema (schemathesis), in process.

Every operation gets valid and invalid inputs (schemathesis' positive and negative modes) against
the real app on a tiny artifact. Each response must be a non-5xx, have a status and a content type
the schema documents, and a body that validates against the documented schema; error bodies must
carry no path or trace. Bounded and repeatable: 40 examples per operation, derandomized.

The schema is read from ``create_app(...).openapi()`` at import (no artifact needed for that), and
requests go to an app whose lifespan loads a tiny artifact built by a fixture: schemathesis'
``pytest.from_fixture`` loader does not work with this pytest (it sets ``request.node._nodeid``,
which pytest 9 no longer has).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from similarity_api.app import create_app
from similarity_api.build.pipeline import build
from similarity_api.settings import ServeSettings

from .artifact_damage import tiny_dataset
from .conftest import build_settings, serve_settings

LEAKS = re.compile(r"/tmp/|/work/|/home/|/root/|\.py\b|Traceback|File \"")

schema = schemathesis.openapi.from_dict(
    create_app(ServeSettings(artifacts_dir=Path("unused"), watch_interval=0)).openapi()
)


@pytest.fixture(scope="module")
def tiny_app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    root = tmp_path_factory.mktemp("schemathesis")
    build(build_settings(tiny_dataset(root / "data"), root / "artifacts", recall_sample=0))
    # With a token configured, /admin/reload is live: schemathesis' guesses get 401 problems.
    return create_app(serve_settings(root / "artifacts", admin_token="not-guessable-0123456789"))


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_conforms_to_its_schema(case: schemathesis.Case, tiny_app: FastAPI) -> None:
    response = case.call(app=tiny_app)
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
    if response.status_code >= 400:
        assert response.headers["content-type"][0].startswith("application/problem+json")
        assert not LEAKS.search(response.text), response.text
