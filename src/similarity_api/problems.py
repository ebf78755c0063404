"""The one translation point from exceptions to RFC 9457 ``application/problem+json`` responses."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from similarity_api.errors import (
    EmptyProfileError,
    IndexNotReadyError,
    NoComparableActivityError,
    ReloadError,
    UnknownUserError,
)

logger = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "/problems/"


def problem(
    status: int,
    slug: str | None,
    detail: str,
    *,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **members: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"{TYPE_BASE}{slug}" if slug else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    body.update({k: v for k, v in members.items() if v is not None})
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _loc(loc: Sequence[Any]) -> str:
    return ".".join(str(p) for p in loc)


def _issue(error: Mapping[str, Any]) -> dict[str, Any]:
    loc, msg, kind = (
        tuple(error.get("loc", ())),
        str(error.get("msg", "")),
        str(error.get("type", "")),
    )
    if kind == "json_invalid" and len(loc) == 2 and loc[0] == "body" and isinstance(loc[1], int):
        # FastAPI puts the decoder's character offset in the location, as if it were a field.
        reason = error.get("ctx", {}).get("error", msg)
        return {
            "loc": ["body"],
            "msg": f"invalid JSON at character {loc[1]}: {reason}",
            "type": kind,
        }
    return {"loc": [str(p) for p in loc], "msg": msg, "type": kind}


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_issue(e) for e in exc.errors()[:20]]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    detail = f"{_loc(first['loc'])}: {first['msg']}" if first["loc"] else str(first["msg"])
    return problem(422, "invalid-request", detail, title="Invalid request", errors=errors)


#: The two 404s about one customer: (type slug, title).
_CUSTOMER_PROBLEMS: dict[type[Exception], tuple[str, str]] = {
    UnknownUserError: ("unknown-user", "Unknown customer"),
    NoComparableActivityError: ("no-comparable-activity", "Customer has no comparable activity"),
}


async def _customer(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UnknownUserError | NoComparableActivityError)
    slug, title = _CUSTOMER_PROBLEMS[type(exc)]
    return problem(
        404,
        slug,
        str(exc),
        title=title,
        user_handle=exc.user_handle,
        index_version=exc.index_version,
    )


async def _empty_profile(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EmptyProfileError)
    return problem(
        422,
        "empty-profile",
        str(exc),
        title="Nothing known in the profile",
        ignored=exc.ignored,
        index_version=exc.index_version,
    )


async def _not_ready(request: Request, exc: Exception) -> JSONResponse:
    return problem(
        503, "index-not-ready", str(exc), title="No index loaded", headers={"Retry-After": "5"}
    )


async def _reload_failed(request: Request, exc: Exception) -> JSONResponse:
    return problem(
        409, "reload-failed", str(exc), title="Reload failed; the previous index keeps serving"
    )


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, (ValueError, RecursionError)):
        # FastAPI answers a bare 400 when the body is not UTF-8, nests too deeply or holds a number
        # too long to convert. To the client that is an invalid JSON body like any other: 422.
        msg = "the body is not valid JSON (not UTF-8, nested too deeply or a number too long)"
        errors = [{"loc": ["body"], "msg": msg, "type": "json_invalid"}]
        return problem(
            422, "invalid-request", f"body: {msg}", title="Invalid request", errors=errors
        )
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
    return problem(exc.status_code, None, detail, headers=getattr(exc, "headers", None))


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(
        500, "internal", "an internal error occurred; it has been logged", title="Internal error"
    )


def install(app: FastAPI) -> None:
    """Register every handler on ``app``."""
    app.add_exception_handler(RequestValidationError, _validation)
    for customer_error in _CUSTOMER_PROBLEMS:
        app.add_exception_handler(customer_error, _customer)
    app.add_exception_handler(EmptyProfileError, _empty_profile)
    app.add_exception_handler(IndexNotReadyError, _not_ready)
    app.add_exception_handler(ReloadError, _reload_failed)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _internal)
