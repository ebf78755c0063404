"""HTTP <-> domain translation only. Lookups run in the threadpool so the event loop never blocks."""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from similarity_api import schemas
from similarity_api.dependencies import IndexDep, StateDep
from similarity_api.errors import EmptyProfileError, NoComparableActivityError, UnknownUserError
from similarity_api.index import Neighbour, Profile, SimilarityIndex, UserSummary
from similarity_api.problems import MEDIA_TYPE
from similarity_api.settings import ServeSettings

Responses = dict[int | str, dict[str, Any]]

#: The limits as shipped, for the descriptions below. An operator may set others; the problem
#: body's `limit_bytes` always states the one in force.
_BODY_LIMIT: int = ServeSettings.model_fields["max_body_bytes"].default
_HEAD_LIMIT: int = ServeSettings.model_fields["max_header_bytes"].default


def _problem_doc(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "model": schemas.Problem,
        "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


#: Every operation can answer these two.
COMMON: Responses = {
    431: _problem_doc(
        f"Request line and headers over {_HEAD_LIMIT:,} bytes ({_HEAD_LIMIT // 1024} KiB; "
        "`SIMILARITY_MAX_HEADER_BYTES`; applied by `python -m similarity_api serve`); "
        "`limit_bytes` states the limit in force. The connection is then closed."
    ),
    500: _problem_doc("Internal error (type /problems/internal); it has been logged."),
}
router = APIRouter(responses=COMMON)

INVALID: Responses = {
    422: _problem_doc("Invalid request: the `errors` member names each wrong field or parameter.")
}
NOT_READY: Responses = {503: _problem_doc("No verified index is loaded yet.")}
UNKNOWN: Responses = {
    404: _problem_doc(
        "Unknown customer (type /problems/unknown-user) or a known customer with no comparable "
        "activity (type /problems/no-comparable-activity); both carry `user_handle` and the "
        "`index_version` that answered."
    )
}
TOO_LARGE: Responses = {
    413: _problem_doc(
        f"Request body over {_BODY_LIMIT:,} bytes ({_BODY_LIMIT // 1024} KiB; "
        "`SIMILARITY_MAX_BODY_BYTES`); "
        "`limit_bytes` states the limit in force."
    )
}


async def require_json(request: Request) -> None:
    """Bodies are JSON: a body declared as anything else, or not declared at all, is 415."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not media:
        if await request.body():  # already read, and cached, by FastAPI
            raise HTTPException(
                status_code=415,
                detail="the body has no Content-Type: send it as JSON, with "
                "`Content-Type: application/json`",
            )
    elif media != "application/json" and not media.endswith("+json"):
        raise HTTPException(
            status_code=415,
            detail=f"the body is declared as {media[:100]}: send it as JSON, with "
            "`Content-Type: application/json`",
        )


JSON_BODY = [Depends(require_json)]
UNSUPPORTED: Responses = {
    415: _problem_doc("The body is not declared as `Content-Type: application/json`.")
}


def _json(model: BaseModel) -> Response:
    """A response model as JSON, serialized once by pydantic. (Returned as the model, FastAPI would
    validate it again against ``response_model``, turn it into Python objects, then json.dumps
    them: 0.12 ms for a k=10 answer, against 0.025 ms here.) The OpenAPI document still names the
    model, from the route's ``response_model``."""
    return Response(model.__pydantic_serializer__.to_json(model), media_type="application/json")


@contextlib.contextmanager
def _answering(index: SimilarityIndex) -> Iterator[None]:
    """Name the index on the errors it raises, so their problem bodies can say which one it was."""
    try:
        yield
    except (UnknownUserError, NoComparableActivityError, EmptyProfileError) as exc:
        exc.index_version = index.version
        raise


def _summary(s: UserSummary) -> schemas.CustomerSummary:
    return schemas.CustomerSummary(
        top_tags=list(s.top_tags),
        courses_viewed=s.courses_viewed,
        view_time_seconds=round(s.view_time_seconds),
        interests=s.interests,
        assessments=s.assessments,
    )


def _neighbors(found: tuple[Neighbour, ...]) -> list[schemas.Neighbor]:
    return [
        schemas.Neighbor(
            rank=n.rank,
            user_handle=n.user_handle,
            similarity=n.similarity,
            shared=[
                schemas.SharedFeature(feature=c.feature, kind=c.kind, contribution=c.contribution)
                for c in n.shared
            ],
            remainder=n.remainder,
            summary=_summary(n.summary),
        )
        for n in found
    ]


@router.post(
    "/predict",
    response_model=schemas.PredictResponse,
    responses={**UNKNOWN, **INVALID, **TOO_LARGE, **UNSUPPORTED, **NOT_READY},
    dependencies=JSON_BODY,
    summary="Customers most similar to a known customer",
    tags=["similarity"],
)
async def predict(body: schemas.PredictRequest, index: IndexDep) -> Response:
    with _answering(index):
        found = await run_in_threadpool(index.similar_to_user, body.user_handle, body.k)
    return _json(
        schemas.PredictResponse(
            user_handle=body.user_handle, index_version=index.version, neighbors=_neighbors(found)
        )
    )


def _batch(index: SimilarityIndex, handles: list[int], k: int) -> schemas.BatchResponse:
    results: list[schemas.BatchResult] = []
    not_found: list[int] = []
    inactive: list[int] = []
    for handle in dict.fromkeys(handles):
        try:
            found = index.similar_to_user(handle, k)
        except UnknownUserError:
            not_found.append(handle)
        except NoComparableActivityError:
            inactive.append(handle)
        else:
            results.append(schemas.BatchResult(user_handle=handle, neighbors=_neighbors(found)))
    return schemas.BatchResponse(
        index_version=index.version,
        results=results,
        not_found=not_found,
        no_comparable_activity=inactive,
    )


@router.post(
    "/predict/batch",
    response_model=schemas.BatchResponse,
    responses={
        422: _problem_doc(
            "Invalid body: the `errors` member names each wrong field; a batch over "
            f"len(user_handles) x k = {schemas.MAX_BATCH_NEIGHBOURS:,} neighbours is refused "
            'with loc ["body"].'
        ),
        **TOO_LARGE,
        **UNSUPPORTED,
        **NOT_READY,
    },
    dependencies=JSON_BODY,
    summary="Neighbours for many customers at once; one bad handle never fails the batch",
    tags=["similarity"],
)
async def predict_batch(body: schemas.BatchRequest, index: IndexDep) -> Response:
    return _json(await run_in_threadpool(_batch, index, list(body.user_handles), body.k))


@router.post(
    "/predict/profile",
    response_model=schemas.ProfileResponse,
    responses={
        422: _problem_doc(
            "Invalid body, or a profile with nothing the index knows (type /problems/empty-profile, "
            "with `ignored` and `index_version`)."
        ),
        **TOO_LARGE,
        **UNSUPPORTED,
        **NOT_READY,
    },
    dependencies=JSON_BODY,
    summary="Customers most similar to a described behaviour (new or anonymous customer)",
    tags=["similarity"],
)
async def predict_profile(body: schemas.ProfileRequest, index: IndexDep) -> Response:
    profile = Profile(
        course_tags=body.course_tags,
        courses=body.courses,
        interests=body.interests,
        assessments=body.assessments,
    )
    with _answering(index):
        result = await run_in_threadpool(index.similar_to_profile, profile, body.k)
    return _json(
        schemas.ProfileResponse(
            index_version=index.version,
            neighbors=_neighbors(result.neighbours),
            ignored=result.ignored,
        )
    )


@router.get(
    "/users/{user_handle}",
    response_model=schemas.UserResponse,
    responses={
        404: _problem_doc("Unknown customer: carries `user_handle` and `index_version`."),
        422: _problem_doc(
            "Invalid customer id (digits only, 1..2**63-1): `errors` says why, at "
            '["path", "user_handle"].'
        ),
        **NOT_READY,
    },
    summary="A customer's own summary as the index knows it",
    tags=["similarity"],
)
async def get_user(
    user_handle: Annotated[
        schemas.UserHandleInPath,
        Path(description="Customer id, digits only (the same rule as `user_handle` in a body)."),
    ],
    index: IndexDep,
) -> schemas.UserResponse:
    with _answering(index):
        summary = index.summary(user_handle)
    return schemas.UserResponse(
        user_handle=user_handle,
        index_version=index.version,
        indexed=summary.indexed,
        summary=_summary(summary),
    )


@router.get(
    "/healthz", response_model=schemas.Health, tags=["operations"], summary="Process is alive"
)
async def healthz() -> schemas.Health:
    return schemas.Health(status="ok")


@router.get(
    "/readyz",
    response_model=schemas.Ready,
    responses=NOT_READY,
    tags=["operations"],
    summary="200 once an index is loaded and has passed its known-answer self-test",
)
async def readyz(state: StateDep) -> schemas.Ready:
    index = state.require_index()
    return schemas.Ready(status="ready", index_version=index.version)


@router.get(
    "/index",
    response_model=schemas.IndexResponse,
    responses=NOT_READY,
    tags=["operations"],
    summary="The live manifest: version, build time, counts, parameters, recall estimate",
)
async def index_info(index: IndexDep) -> schemas.IndexResponse:
    m = index.artifact.manifest
    return schemas.IndexResponse(
        index_version=m.version,
        built_at=m.created_at,
        content_sha256=m.content_sha256,
        schema_version=m.schema_version,
        metric=m.metric,
        dim=m.dim,
        n_trees=m.n_trees,
        search_k=index.search_k,
        candidates=index.candidates,
        counts=m.counts,
        parameters=m.parameters,
        quality=m.quality,
        timings=m.timings,
        inputs={
            name: {k: v for k, v in doc.items() if k != "sha256"} for name, doc in m.inputs.items()
        },
        libraries=m.libraries,
    )


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    tags=["operations"],
    summary="Prometheus metrics (text format) of this worker process",
)
async def metrics(state: StateDep) -> PlainTextResponse:
    return PlainTextResponse(
        generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


@router.post(
    "/admin/reload",
    response_model=schemas.ReloadResponse,
    responses={
        401: _problem_doc("Missing or wrong bearer token."),
        404: _problem_doc("Reload is disabled: no admin token is configured."),
        409: _problem_doc(
            "The published artifact failed to load; the previous index keeps serving."
        ),
        **INVALID,
    },
    tags=["operations"],
    summary="Load the newest published artifact without downtime (bearer token)",
    description="The worker that answers loads, verifies and swaps in the version `current` "
    "points to before it replies; with several workers the others follow by themselves within "
    "`SIMILARITY_WATCH_INTERVAL` seconds (each watches `current`). A version that fails to load "
    "is refused (409) and the previous one keeps serving.",
)
async def admin_reload(
    state: StateDep, authorization: Annotated[str | None, Header()] = None
) -> JSONResponse | schemas.ReloadResponse:
    token = state.settings.admin_token
    if token is None:
        raise HTTPException(status_code=404, detail="Not Found")
    expected = f"Bearer {token.get_secret_value()}".encode()
    given = (authorization or "").encode()
    if not hmac.compare_digest(given, expected):
        raise HTTPException(
            status_code=401,
            detail="a valid `Authorization: Bearer <token>` header is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    previous, index = await state.reload()
    return schemas.ReloadResponse(
        index_version=index.version, previous_version=previous, changed=previous != index.version
    )
