"""``create_app(settings)``: the composition root. No module-level app, globals or caches.

Run with ``python -m similarity_api serve`` or ``uvicorn --factory similarity_api.app:create_app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import anyio.to_thread
import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from threadpoolctl import threadpool_limits

from similarity_api import __version__, problems
from similarity_api.errors import ArtifactError
from similarity_api.limits import BodyLimitMiddleware
from similarity_api.metrics import Metrics, MetricsMiddleware
from similarity_api.routes import router
from similarity_api.settings import ServeSettings
from similarity_api.state import ServiceState, load_index

logger = logging.getLogger(__name__)

#: Where /docs finds Swagger UI's script and styles.
DOCS_ASSETS = "/docs-assets"

DESCRIPTION = """Which customers behave most like a given customer, and why.

Every error is `application/problem+json` (RFC 9457). Similarities are exact cosines of customer
embeddings learned from course views, course tags, followed interests and assessment scores;
`shared` + `remainder` add up to each similarity."""


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    state = ServiceState(settings=settings, metrics=Metrics(settings.prometheus_multiproc_dir))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Per-request matrix products are tiny: many BLAS threads per request only contend.
        blas = threadpool_limits(limits=settings.blas_threads)
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.lookup_threads
        state.metrics.forget_dead_workers()
        try:
            state.swap(await run_in_threadpool(load_index, settings))
        except ArtifactError as exc:
            if not settings.wait_for_index:
                logger.error("cannot start: %s", exc)
                blas.restore_original_limits()
                state.metrics.worker_stopped()
                raise
            state.problem = exc.public
            logger.warning("starting without an index (wait_for_index): %s", exc)
        watcher = (
            asyncio.create_task(state.watch(settings.watch_interval))
            if settings.watch_interval > 0
            else None
        )
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            blas.restore_original_limits()
            state.metrics.worker_stopped()

    app = FastAPI(
        title="similarity-api",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # FastAPI's /docs and /redoc load their scripts from a CDN: a blank page offline.
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = state
    _offline_docs(app)
    app.include_router(router)
    problems.install(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app


def _offline_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from files shipped in the wheel (swagger-ui-bundle), not a CDN."""
    app.mount(
        DOCS_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets"
    )

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - docs",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )
