"""A trivial endpoint for the serving benchmark: POST /predict that parses the same request body and
returns a canned JSON body of the same size as a real answer, doing no similarity work.

Served by uvicorn the way ``similarity_api serve`` serves the real app (same uvicorn options), so
real/trivial throughput is a ratio that survives a noisy machine:

    TRIVIAL_BODY_FILE=body.json .venv/bin/python benchmarks/trivial_app.py --port 8702 --workers 2
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    user_handle: int = Field(ge=1)
    k: int = Field(10, ge=1, le=100)


def create_app() -> FastAPI:
    body = Path(os.environ["TRIVIAL_BODY_FILE"]).read_bytes()
    app = FastAPI(title="trivial")

    @app.post("/predict")
    async def predict(request: PredictRequest) -> Response:
        return Response(content=body, media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8702)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, here)
    uvicorn.run(
        "trivial_app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
        proxy_headers=False,
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
