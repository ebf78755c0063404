"""async def + run_in_threadpool (what /predict is) against a plain def route (FastAPI runs the whole
function in its threadpool), on the same app, index and requests.

    .venv/bin/python benchmarks/route_style.py --artifacts-dir /tmp/scale/art_10000_deterministic

The service app gets one extra route, ``POST /predict-def``: the same body, lookup and response
model as ``/predict``, written as a plain function. One uvicorn worker serves both; ``wrk``
(32 connections) alternates between them for ``--rounds`` rounds of ``--seconds`` each, so a
noisy machine affects both alike, and the table reports each round's ratio and the median.
Writes benchmarks/results/route_style.{md,json} (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fastapi import FastAPI

import procmon
from serving import LUA, server
from similarity_api import schemas
from similarity_api.app import create_app
from similarity_api.dependencies import IndexDep
from similarity_api.routes import JSON_BODY, _answering, _neighbors

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def create_bench_app() -> Any:
    """The service's app plus ``/predict-def`` (run by uvicorn as a factory)."""
    app: FastAPI = create_app()

    @app.post("/predict-def", response_model=schemas.PredictResponse, dependencies=JSON_BODY)
    def predict_def(body: schemas.PredictRequest, index: IndexDep) -> schemas.PredictResponse:
        with _answering(index):
            found = index.similar_to_user(body.user_handle, body.k)
        return schemas.PredictResponse(
            user_handle=body.user_handle, index_version=index.version, neighbors=_neighbors(found)
        )

    return app


def wrk(port: int, script: Path, seconds: int) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds}s", "--timeout", "10s", "-s", str(script),
         f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    summary["rps"] = summary["requests"] / (summary["duration_us"] / 1e6)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--artifacts-dir", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("--port", type=int, default=8711)
    p.add_argument("--out", type=Path, default=RESULTS / "route_style")
    args = p.parse_args(argv)

    version = (args.artifacts_dir / "current").resolve()
    users = np.load(version / "users.npy", mmap_mode="r")
    user_item = np.load(version / "user_item.npy", mmap_mode="r")
    known = np.asarray(users[np.asarray(user_item) >= 0])
    handles = np.random.default_rng(42).choice(known, size=min(20_000, known.size), replace=False)
    work = Path(tempfile.mkdtemp(prefix="route-style-"))
    scripts = {}
    for route in ("/predict", "/predict-def"):
        lua = LUA % {"handles": ",".join(str(int(h)) for h in handles), "k": 10, "seed": 42}
        scripts[route] = work / f"{route.strip('/')}.lua"
        scripts[route].write_text(lua.replace('"/predict"', f'"{route}"'))
    env = dict(os.environ) | {
        "SIMILARITY_ARTIFACTS_DIR": str(args.artifacts_dir),
        "SIMILARITY_WATCH_INTERVAL": "3600",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT / "src")]),
    }
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "route_style:create_bench_app",
        "--host", "127.0.0.1", "--port", str(args.port), "--log-level", "warning",
    ]  # fmt: skip
    rounds: list[dict[str, float]] = []
    with server(command, args.port, env, work / "server.log", 300):
        for route in scripts:  # both answer, the same way
            req = urllib.request.Request(
                f"http://127.0.0.1:{args.port}{route}",
                data=json.dumps({"user_handle": int(handles[0])}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=30) as r:
                assert r.status == 200
        for script in scripts.values():
            wrk(args.port, script, 2)  # warm-up
        for _ in range(args.rounds):
            row = {
                route: wrk(args.port, script, args.seconds)["rps"]
                for route, script in scripts.items()
            }
            rounds.append(row)
            print(json.dumps(row), flush=True)
    manifest = json.loads((version / "manifest.json").read_text())
    ratios = [r["/predict"] / r["/predict-def"] for r in rounds]
    result = {
        "machine": procmon.machine(),
        "command": "benchmarks/route_style.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "index": {k: manifest[k] for k in ("n_items", "dim", "n_trees", "search_k")},
        "rounds": rounds,
        "median_ratio": statistics.median(ratios),
    }
    m = result["machine"]
    lines = [
        "# async def + run_in_threadpool against a plain def route",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; load average at start {m['load_avg_at_start']}.",
        f"Index: {manifest['n_items']:,} customers, search_k {manifest['search_k']}; one uvicorn "
        "worker; wrk 32 connections, POST random known customers, k=10.",
        f"Command: `{result['command']}`  Run at {result['started']}.",
        "",
        "| round | /predict (async def) req/s | /predict-def (def) req/s | async / def |",
        "|---:|---:|---:|---:|",
    ]
    for i, (r, ratio) in enumerate(zip(rounds, ratios, strict=True), start=1):
        lines.append(f"| {i} | {r['/predict']:.0f} | {r['/predict-def']:.0f} | {ratio:.2f} |")
    lines.append(f"| median | | | **{result['median_ratio']:.2f}** |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
