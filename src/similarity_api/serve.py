"""``python -m similarity_api serve``: run the service with uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError

from similarity_api.build.cli import validation_message
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
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="[info]")
    return p


#: ServeSettings fields that have a command-line option -> the option; the rest are environment only.
OPTIONS: dict[str, str] = {
    name: "--" + name.replace("_", "-")
    for name in ("artifacts_dir", "host", "port", "workers", "log_level")
}


def listen_problem(host: str, port: int, workers: int) -> str | None:
    """Why uvicorn could not listen on ``host:port``, or None: every address it would use binds.

    Binds as uvicorn will (SO_REUSEADDR; one worker: every address the host resolves to, as asyncio
    does; several: the first, as uvicorn's own socket does) and closes the sockets again.
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    family = socket.AF_UNSPEC
    if workers > 1:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        found = socket.getaddrinfo(
            host or None, port, family=family, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for af, kind, proto, _, address in found if workers == 1 else found[:1]:
            with socket.socket(af, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if af == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
    except OSError as exc:  # socket.gaierror included: the host does not resolve
        return f"cannot listen on {where}: {exc.strerror or exc}"
    except UnicodeError as exc:  # not even a host name (an empty or too long label)
        return f"cannot listen on {where}: {exc}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides: dict[str, Any] = {
        name: getattr(args, name) for name in OPTIONS if getattr(args, name) is not None
    }
    try:
        settings = ServeSettings(**overrides)
    except ValidationError as exc:
        print(f"error: {validation_message(exc, ServeSettings, OPTIONS)}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.workers > 1 and settings.watch_interval == 0:
        # POST /admin/reload reaches the one worker that accepts it; the others learn of a new
        # `current` only by watching it.
        print(
            "error: --workers > 1 needs SIMILARITY_WATCH_INTERVAL > 0: a reload reaches one "
            "worker, the others follow a newly published version by watching for it",
            file=sys.stderr,
        )
        return 2
    # Before the index loads (seconds on a large one), not as uvicorn's exit 3 afterwards.
    problem = listen_problem(settings.host, settings.port, settings.workers)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
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
    with _shared_metrics(settings.prometheus_multiproc_dir):
        uvicorn.run(
            "similarity_api.app:create_app", factory=True, workers=settings.workers, **common
        )
    return 0


@contextlib.contextmanager
def _shared_metrics(configured: Path | None) -> Iterator[None]:
    """Point every worker at one prometheus multiprocess folder, so that /metrics is the whole
    service's. A folder of our own is made and removed; a configured one is emptied first (values
    of an earlier run must not count)."""
    if configured is not None:
        configured.mkdir(parents=True, exist_ok=True)
        for stale in configured.glob("*.db"):
            stale.unlink()
        yield
        return
    folder = Path(tempfile.mkdtemp(prefix="similarity-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
