"""``python -m similarity_api serve``: run the service with uvicorn."""

from __future__ import annotations

import argparse
import copy
import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

from similarity_api.limits import HeadLimitedHttpToolsProtocol
from similarity_api.settings import ServeSettings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="similarity_api serve",
        description=(
            "Serve the published index over HTTP. Every option can also be set as an environment "
            "variable SIMILARITY_<OPTION> (e.g. SIMILARITY_PORT); the command line wins."
        ),
    )
    p.add_argument("--artifacts-dir", type=Path, help="folder holding `current` [artifacts]")
    p.add_argument("--host", help="bind address [127.0.0.1]")
    p.add_argument("--port", type=int, help="bind port [8000]")
    p.add_argument(
        "--workers", type=int, help="worker processes sharing the memory-mapped index [1]"
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "artifacts_dir": args.artifacts_dir,
            "host": args.host,
            "port": args.port,
            "workers": args.workers,
            "log_level": args.log_level,
        }.items()
        if v is not None
    }
    try:
        settings = ServeSettings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        print(f"error: {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
        return 2
    if not settings.wait_for_index:
        # Refuse a missing or broken artifact here: one line and exit 1. Left to the workers, a
        # refusal is a lifespan traceback, and with --workers > 1 uvicorn's parent then exits 0.
        from similarity_api.errors import ArtifactError
        from similarity_api.state import load_index

        try:
            load_index(settings).artifact.index.unload()
        except ArtifactError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["formatters"]["app"] = {
        "format": "%(asctime)s %(levelname)s %(name)s: %(message)s",
    }
    log_config["handlers"]["app"] = {
        "class": "logging.StreamHandler",
        "formatter": "app",
        "stream": "ext://sys.stderr",
    }
    # uvicorn applies this in every worker process, so workers log the app's lines too.
    log_config["loggers"]["similarity_api"] = {
        "handlers": ["app"],
        "level": settings.log_level.upper(),
        "propagate": False,
    }
    common: dict[str, Any] = {
        "log_config": log_config,
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "proxy_headers": False,
        "server_header": False,
        # httptools, with a bound on the request head that uvicorn itself does not offer.
        "http": functools.partial(
            HeadLimitedHttpToolsProtocol, max_head_bytes=settings.max_header_bytes
        ),
    }
    if settings.workers == 1:
        from similarity_api.app import create_app

        uvicorn.run(create_app(settings), **common)
        return 0
    # Worker processes build their own app from the environment: hand the resolved values down.
    for key, value in overrides.items():
        os.environ[f"SIMILARITY_{key.upper()}"] = str(value)
    uvicorn.run("similarity_api.app:create_app", factory=True, workers=settings.workers, **common)
    return 0
