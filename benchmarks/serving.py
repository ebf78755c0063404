"""Serving: /predict throughput and latency against a trivial endpoint, 1 and 2 workers.

For each worker count, the real service (``similarity_api serve``) and ``trivial_app.py`` (same
request parsing, canned body of the same size as a real /predict answer, same uvicorn options) run
on 127.0.0.1 and each gets, in turn:

* a fixed rate (default 500 requests/s) from an open-loop asyncio client with a fixed request count;
  latency is measured from each request's scheduled send time, so queueing counts;
* saturation: ``wrk`` (Debian package) with a Lua script POSTing random known user handles, for a
  fixed duration;

then the memory of each worker of the real service (RSS and PSS from /proc/PID/smaps_rollup).
Last, one worker of the real service at saturation for each ``--sweep-lookup-threads`` value
(``SIMILARITY_LOOKUP_THREADS``), the values in turn for ``--sweep-rounds`` rounds.

    .venv/bin/python benchmarks/serving.py --artifacts-dir /tmp/scale/art_1000000_deterministic

Writes benchmarks/results/serving.{md,json}. Everything is bounded: request counts and durations
are fixed, servers are stopped at the end (also on error).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procmon

ROOT = Path(__file__).resolve().parents[1]
# The interpreter running this script runs the children too (any env with the bench group).
PY = sys.executable
RESULTS = ROOT / "benchmarks" / "results"

LUA = """
local handles = {%(handles)s}
local k = %(k)d
math.randomseed(%(seed)d)
local headers = {["Content-Type"] = "application/json"}
request = function()
  local h = handles[math.random(#handles)]
  return wrk.format("POST", "/predict", headers, '{"user_handle":' .. h .. ',"k":' .. k .. '}')
end
local non200 = 0
response = function(status, headers, body)
  if status ~= 200 then non200 = non200 + 1 end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%%d,"duration_us":%%d,"bytes":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


# --- servers ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def server(
    command: list[str], port: int, env: dict[str, str], log: Path, ready_timeout: float
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited ({proc.returncode}); see {log}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready after {ready_timeout:.0f} s; see {log}")
                time.sleep(0.5)
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def post(port: int, body: dict[str, Any]) -> bytes:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return bytes(r.read())


def worker_memory(master: int) -> list[dict[str, int]]:
    """RSS and PSS (kB) of each process serving requests: the children of a multi-worker master,
    or the master itself when it has no children."""
    import psutil

    parent = psutil.Process(master)
    # uvicorn's multiprocess master also starts a resource tracker; workers are the python children
    # that hold the index (the largest RSS).
    procs = [
        c
        for c in parent.children(recursive=True)
        if "resource_tracker" not in " ".join(c.cmdline())
    ]
    procs = procs or [parent]
    out = []
    for p in procs:
        fields: dict[str, int] = {"pid": p.pid}
        for line in Path(f"/proc/{p.pid}/smaps_rollup").read_text().splitlines()[1:]:
            name, value, *_ = line.split()
            fields[name.rstrip(":")] = int(value)
        out.append(fields)
    return out


# --- load ----------------------------------------------------------------------------------------


async def _fixed_rate(
    port: int, bodies: list[bytes], rate: float, connections: int
) -> dict[str, Any]:
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []
    errors = {"status": 0, "exception": 0}
    # perf_counter, not loop.time(): uvloop's clock has millisecond steps and is cached per loop
    # iteration, which would round every latency to whole milliseconds.
    start = time.perf_counter() + 0.2

    async def one(i: int, body: bytes) -> None:
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        reader, writer = await pool.get()
        try:
            writer.write(
                b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - scheduled)
            if status != 200:
                errors["status"] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors["exception"] += 1
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            pool.put_nowait((reader, writer))

    began = time.perf_counter()
    await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
    elapsed = time.perf_counter() - began
    while not pool.empty():
        _, writer = pool.get_nowait()
        writer.close()
    lat = np.asarray(latencies) * 1e3
    return {
        "requests": len(bodies),
        "completed": len(latencies),
        "seconds": round(elapsed, 3),
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
        "p90_ms": round(float(np.percentile(lat, 90)), 2) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
        "max_ms": round(float(lat.max()), 2) if lat.size else None,
        "errors": errors["status"] + errors["exception"],
        "error_detail": errors,
    }


def fixed_rate(
    port: int, handles: np.ndarray, k: int, rate: float, seconds: float, seed: int
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    bodies = [json.dumps({"user_handle": int(h), "k": k}).encode() for h in rng.choice(handles, n)]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    return runner(_fixed_rate(port, bodies, rate, connections=64))


def saturate(
    port: int, script: Path, seconds: int, connections: int, threads: int
) -> dict[str, Any]:
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("{"))
    raw = json.loads(line)
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    return {
        "command": " ".join(command),
        "requests": raw["requests"],
        "rps": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "p50_ms": raw["p50_us"] / 1e3,
        "p90_ms": raw["p90_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "max_ms": raw["max_us"] / 1e3,
        "errors": errors,
        "error_detail": {k: raw[k] for k in ("connect", "read", "write", "status", "timeout")},
    }


# --- report --------------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Serving",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; load average at start "
        f"{m['load_avg_at_start']} (client, wrk and servers share the same 2 cores).",
        f"Index: {result['index']['n_items']:,} customers, dim {result['index']['dim']}, "
        f"n_trees {result['index']['n_trees']}, search_k {result['search_k']}, candidates "
        f"{result['index']['candidates']}; /predict k={result['k']}, body "
        f"{result['body_bytes']:,} bytes (the trivial endpoint returns the same bytes).",
        f"Command: `{result['command']}`  Run at {result['started']}.",
        "",
        f"## Fixed rate: {result['rate']:.0f} requests/s for {result['fixed_seconds']:.0f} s "
        "(open loop, latency from the scheduled send time)",
        "",
        "| workers | endpoint | achieved req/s | p50 ms | p90 ms | p99 ms | max ms | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for w in result["runs"]:
        for name in ("predict", "trivial"):
            f = w[name]["fixed"]
            lines.append(
                f"| {w['workers']} | {name} | {f['achieved_rps']} | {f['p50_ms']} | {f['p90_ms']} "
                f"| {f['p99_ms']} | {f['max_ms']} | {f['errors']} |"
            )
    lines += [
        "",
        f"## Saturation: wrk, {result['saturation_connections']} connections, "
        f"{result['saturation_seconds']} s",
        "",
        "| workers | endpoint | req/s | p50 ms | p99 ms | errors | predict / trivial |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for w in result["runs"]:
        ratio = w["predict"]["saturation"]["rps"] / w["trivial"]["saturation"]["rps"]
        for name in ("predict", "trivial"):
            s = w[name]["saturation"]
            lines.append(
                f"| {w['workers']} | {name} | {s['rps']} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} "
                f"| {s['errors']} | {f'{ratio:.2f}' if name == 'predict' else ''} |"
            )
    sweep = result.get("lookup_threads") or []
    if sweep:
        values = list(dict.fromkeys(p["lookup_threads"] for p in sweep))
        rounds = sorted({p["round"] for p in sweep})
        base = values[0]
        lines += [
            "",
            f"## Lookup threads per worker (`SIMILARITY_LOOKUP_THREADS`): 1 worker, wrk "
            f"{result['saturation_connections']} connections, {result['sweep_seconds']} s, "
            f"{len(rounds)} rounds in turn",
            "",
            "| lookup threads | "
            + " | ".join(f"round {r} req/s" for r in rounds)
            + f" | mean req/s | / {base} threads | p99 ms (mean) | errors |",
            "|---:|" + "---:|" * (len(rounds) + 4),
        ]

        def mean_rps(v: int) -> float:
            pts = [p["rps"] for p in sweep if p["lookup_threads"] == v]
            return sum(pts) / len(pts)

        for v in values:
            pts = [p for p in sweep if p["lookup_threads"] == v]
            by_round = {p["round"]: p for p in pts}
            p99 = sum(p["p99_ms"] for p in pts) / len(pts)
            lines.append(
                f"| {v} | "
                + " | ".join(f"{by_round[r]['rps']}" for r in rounds)
                + f" | {mean_rps(v):.1f} | {mean_rps(v) / mean_rps(base):.2f} | {p99:.1f} "
                f"| {sum(p['errors'] for p in pts)} |"
            )
    lines += [
        "",
        "## Memory of the real service's workers after the load (/proc/PID/smaps_rollup)",
        "",
        "| workers | worker | RSS MiB | PSS MiB | shared (clean+dirty) MiB | private MiB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for w in result["runs"]:
        for i, mem in enumerate(w["memory"], start=1):
            shared = mem.get("Shared_Clean", 0) + mem.get("Shared_Dirty", 0)
            private = mem.get("Private_Clean", 0) + mem.get("Private_Dirty", 0)
            lines.append(
                f"| {w['workers']} | {i} | {mem['Rss'] / 1024:.0f} | {mem['Pss'] / 1024:.0f} "
                f"| {shared / 1024:.0f} | {private / 1024:.0f} |"
            )
        total_rss = sum(m["Rss"] for m in w["memory"]) / 1024
        total_pss = sum(m["Pss"] for m in w["memory"]) / 1024
        lines.append(f"| {w['workers']} | total | {total_rss:.0f} | {total_pss:.0f} | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--artifacts-dir", type=Path, required=True)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--fixed-seconds", type=float, default=20.0)
    p.add_argument("--saturation-seconds", type=int, default=15)
    p.add_argument("--saturation-connections", type=int, default=32)
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--k", type=int, default=10)
    p.add_argument(
        "--search-k",
        type=int,
        default=None,
        help="override the artifact's search_k in the service (SIMILARITY_SEARCH_K)",
    )
    p.add_argument(
        "--sweep-lookup-threads",
        type=int,
        nargs="*",
        default=[1, 2, 4, 40],
        help="SIMILARITY_LOOKUP_THREADS values compared on one worker at saturation",
    )
    p.add_argument("--sweep-rounds", type=int, default=2)
    p.add_argument("--sweep-seconds", type=int, default=10)
    p.add_argument("--port", type=int, default=8701)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--out", type=Path, default=RESULTS / "serving")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed for the saturation runs: apt-get install -y wrk")

    version = (args.artifacts_dir / "current").resolve()
    manifest = json.loads((version / "manifest.json").read_text())
    users = np.load(version / "users.npy", mmap_mode="r")
    user_item = np.load(version / "user_item.npy", mmap_mode="r")
    known = np.asarray(users[np.asarray(user_item) >= 0])
    handles = np.random.default_rng(args.seed).choice(
        known, size=min(20_000, known.size), replace=False
    )
    work = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    script = work / "predict.lua"
    script.write_text(
        LUA % {"handles": ",".join(str(int(h)) for h in handles), "k": args.k, "seed": args.seed}
    )

    env = dict(os.environ)
    env["SIMILARITY_WATCH_INTERVAL"] = "3600"  # no reloads during a run (0 refuses --workers > 1)
    if args.search_k:
        env["SIMILARITY_SEARCH_K"] = str(args.search_k)
    result: dict[str, Any] = {
        "machine": procmon.machine(),
        "command": "benchmarks/serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "index": {k: manifest[k] for k in ("n_items", "dim", "n_trees", "search_k", "candidates")},
        "search_k": args.search_k or manifest["search_k"],
        "k": args.k,
        "rate": args.rate,
        "fixed_seconds": args.fixed_seconds,
        "saturation_seconds": args.saturation_seconds,
        "saturation_connections": args.saturation_connections,
        "sweep_seconds": args.sweep_seconds,
        "runs": [],
    }
    real_port, trivial_port = args.port, args.port + 1

    def real_command(workers: int) -> list[str]:
        return [
            PY,
            "-m",
            "similarity_api",
            "serve",
            "--artifacts-dir",
            str(args.artifacts_dir),
            "--port",
            str(real_port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ]

    try:
        for workers in args.workers:
            run: dict[str, Any] = {"workers": workers}
            real_cmd = real_command(workers)
            with server(
                real_cmd, real_port, env, work / f"real_{workers}.log", args.ready_timeout
            ) as real:
                body = post(real_port, {"user_handle": int(handles[0]), "k": args.k})
                (work / "body.json").write_bytes(body)
                result["body_bytes"] = len(body)
                fixed_rate(real_port, handles, args.k, args.rate, 2.0, args.seed + 1)  # warm-up
                run["predict"] = {
                    "fixed": fixed_rate(
                        real_port, handles, args.k, args.rate, args.fixed_seconds, args.seed
                    ),
                    "saturation": saturate(
                        real_port,
                        script,
                        args.saturation_seconds,
                        args.saturation_connections,
                        args.wrk_threads,
                    ),
                }
                run["memory"] = worker_memory(real.pid)
                run["predict_command"] = " ".join(real_cmd)
            trivial_cmd = [
                PY,
                str(ROOT / "benchmarks" / "trivial_app.py"),
                "--port",
                str(trivial_port),
                "--workers",
                str(workers),
            ]
            tenv = env | {"TRIVIAL_BODY_FILE": str(work / "body.json")}
            with server(trivial_cmd, trivial_port, tenv, work / f"trivial_{workers}.log", 60):
                fixed_rate(trivial_port, handles, args.k, args.rate, 2.0, args.seed + 1)
                run["trivial"] = {
                    "fixed": fixed_rate(
                        trivial_port, handles, args.k, args.rate, args.fixed_seconds, args.seed
                    ),
                    "saturation": saturate(
                        trivial_port,
                        script,
                        args.saturation_seconds,
                        args.saturation_connections,
                        args.wrk_threads,
                    ),
                }
            result["runs"].append(run)
            print(json.dumps(run), flush=True)
        # Lookup threads per worker: one worker at saturation, the values in turn, round after
        # round, so a slow patch of the shared machine hits every value alike.
        result["lookup_threads"] = []
        for round_ in range(1, args.sweep_rounds + 1):
            for threads in args.sweep_lookup_threads:
                tenv = env | {"SIMILARITY_LOOKUP_THREADS": str(threads)}
                log = work / f"threads_{threads}_{round_}.log"
                with server(real_command(1), real_port, tenv, log, args.ready_timeout):
                    saturate(real_port, script, 3, args.saturation_connections, args.wrk_threads)
                    point = saturate(
                        real_port,
                        script,
                        args.sweep_seconds,
                        args.saturation_connections,
                        args.wrk_threads,
                    )
                point = {"lookup_threads": threads, "round": round_, **point}
                result["lookup_threads"].append(point)
                print(json.dumps(point), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
