"""Shared fixtures: real CSVs, real built artifacts, real apps. No monkeypatching of internals."""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from similarity_api.app import create_app
from similarity_api.artifact import Artifact, load, resolve
from similarity_api.build.pipeline import BuildResult, build
from similarity_api.index import SimilarityIndex
from similarity_api.settings import BlockWeights, BuildSettings, ServeSettings

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(
    os.environ.get("SIMILARITY_TEST_REAL_DATA", REPO.parent / "shared" / "data" / "pluralsight")
)

VIEWS_HEADER = (
    "user_handle",
    "view_date",
    "course_id",
    "author_handle",
    "level",
    "view_time_seconds",
)
TAGS_HEADER = ("course_id", "course_tags")
INTERESTS_HEADER = ("user_handle", "interest_tag", "date_followed")
ASSESSMENTS_HEADER = (
    "user_handle",
    "assessment_tag",
    "user_assessment_date",
    "user_assessment_score",
)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Write a CSV in the originals' style: strings quoted, numbers bare, LF line ends."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_dataset(
    data_dir: Path,
    *,
    views: Sequence[Sequence[Any]],
    tags: Sequence[Sequence[Any]],
    interests: Sequence[Sequence[Any]] | None = None,
    assessments: Sequence[Sequence[Any]] | None = None,
) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    write_csv(data_dir / "user_course_views.csv", VIEWS_HEADER, views)
    write_csv(data_dir / "course_tags.csv", TAGS_HEADER, tags)
    if interests is not None:
        write_csv(data_dir / "user_interests.csv", INTERESTS_HEADER, interests)
    if assessments is not None:
        write_csv(data_dir / "user_assessment_scores.csv", ASSESSMENTS_HEADER, assessments)
    return data_dir


def build_settings(data_dir: Path, artifacts_dir: Path, **overrides: Any) -> BuildSettings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "artifacts_dir": artifacts_dir,
        "recall_sample": 200,
        "progress": False,
        "weights": BlockWeights(),
    }
    values.update(overrides)
    return BuildSettings(**values)


def serve_settings(artifacts_dir: Path, **overrides: Any) -> ServeSettings:
    values: dict[str, Any] = {"artifacts_dir": artifacts_dir, "watch_interval": 0}
    values.update(overrides)
    return ServeSettings(**values)


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if not (REAL_DATA / "user_course_views.csv").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"the real dataset is required in CI and is missing at {REAL_DATA}")
        pytest.skip(f"real dataset not found at {REAL_DATA} (set SIMILARITY_TEST_REAL_DATA)")
    return REAL_DATA


@pytest.fixture(scope="session")
def real_build(tmp_path_factory: pytest.TempPathFactory, real_data_dir: Path) -> BuildResult:
    """One artifact built from the real CSVs, shared by the whole session (read-only)."""
    return build(build_settings(real_data_dir, tmp_path_factory.mktemp("real-artifacts")))


@pytest.fixture(scope="session")
def real_artifacts_dir(real_build: BuildResult) -> Path:
    return real_build.path.parent


@pytest.fixture(scope="session")
def real_artifact(real_artifacts_dir: Path) -> Artifact:
    return load(resolve(real_artifacts_dir))


@pytest.fixture(scope="session")
def real_index(real_artifact: Artifact) -> SimilarityIndex:
    return SimilarityIndex(real_artifact)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(real_artifacts_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The real app (lifespan included) on the real artifact, driven over httpx."""
    async with app_client(serve_settings(real_artifacts_dir)) as http:
        yield http


@pytest.fixture
async def exact_client(
    real_artifacts_dir: Path, real_artifact: Artifact
) -> AsyncIterator[httpx.AsyncClient]:
    """The real app with a search_k that makes Annoy visit every leaf of every tree: its answers
    must be exactly the brute-force ones (at the tuned default, recall is the manifest's)."""
    m = real_artifact.manifest
    settings = serve_settings(real_artifacts_dir, search_k=m.n_items * m.n_trees)
    async with app_client(settings) as http:
        yield http


@contextlib.asynccontextmanager
async def serving(
    app: FastAPI, *, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` with its lifespan running, driven over httpx in this event loop."""
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


@contextlib.asynccontextmanager
async def app_client(settings: ServeSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app (lifespan included) with ``settings``, driven over httpx in this event loop."""
    async with serving(create_app(settings)) as http:
        yield http
