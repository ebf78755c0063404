"""End to end: a real uvicorn process on 127.0.0.1, started the way an operator starts it.

Every loop is bounded by a request count and a deadline; every process is terminated and waited for.
Servers read a COPY of the session's artifacts, so publishing new versions touches no other test.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest

from similarity_api.build.pipeline import build
from similarity_api.index import SimilarityIndex

from .conftest import REPO, build_settings, write_dataset

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

HOST = "127.0.0.1"
TOKEN = "s3cret"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def copy_artifacts(source: Path, target: Path) -> Path:
    return Path(shutil.copytree(source, target, symlinks=True))


def assert_stopped_cleanly(server: Server) -> None:
    """uvicorn re-raises the SIGTERM it handled after a graceful shutdown, so -SIGTERM is clean."""
    assert server.process.returncode in (0, -signal.SIGTERM), server.log_text()
    assert "Application shutdown complete" in server.log_text()


def _stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(timeout=STOP_TIMEOUT)


@contextlib.contextmanager
def running_server(
    artifacts_dir: Path, log: Path, *, env: dict[str, str] | None = None, workers: int | None = None
) -> Iterator[Server]:
    """``python -m similarity_api serve`` on a free port; yields once /readyz answers 200."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "similarity_api",
        "serve",
        "--artifacts-dir",
        str(artifacts_dir),
        "--port",
        str(port),
        "--log-level",
        "info",
    ]
    if workers is not None:
        command += ["--workers", str(workers)]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SIMILARITY_")}
    # One BLAS thread per server process: each request's small matrix products are not worth
    # threads, and spinning BLAS threads on a 2-core runner starve the build running alongside.
    environment.update(
        # No reload unless a test asks for one (an hour: 0 would refuse --workers > 1).
        {"SIMILARITY_HOST": HOST, "SIMILARITY_WATCH_INTERVAL": "3600", "OPENBLAS_NUM_THREADS": "1"}
    )
    environment.update(env or {})
    url = f"http://{HOST}:{port}"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=REPO, env=environment, stdout=sink, stderr=subprocess.STDOUT
        )
    server = Server(process=process, url=url, log=log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(base_url=url, timeout=2.0) as http:
            while True:
                if process.poll() is not None:
                    pytest.fail(f"server exited with {process.returncode}:\n{server.log_text()}")
                with contextlib.suppress(httpx.TransportError):
                    if http.get("/readyz").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    pytest.fail(f"server not ready within {START_TIMEOUT} s:\n{server.log_text()}")
                time.sleep(0.1)
        yield server
    finally:
        _stop(process)


def tiny_dataset(data_dir: Path) -> Path:
    view = "2017-01-01"
    return write_dataset(
        data_dir,
        views=[
            [1, view, "c1", 1, "Beginner", 100],
            [1, view, "c2", 1, "Beginner", 50],
            [2, view, "c1", 1, "Beginner", 300],
            [3, view, "c2", 1, "Beginner", 200],
            [3, view, "c3", 1, "Beginner", 20],
            [4, view, "c3", 1, "Beginner", 500],
        ],
        tags=[["c1", "python"], ["c2", "java"], ["c3", "ml"]],
        interests=[[1, "python", "2017-01-01 00:00:00"]],
    )


# --- tests ---------------------------------------------------------------------------------------


async def test_predict_over_http_matches_in_process(
    real_artifacts_dir: Path, real_index: SimilarityIndex, tmp_path: Path
) -> None:
    with running_server(real_artifacts_dir, tmp_path / "server.log") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as http:
            response = await http.post("/predict", json={"user_handle": 1})
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            assert "server" not in response.headers
            body = response.json()
            expected = real_index.similar_to_user(1, 10)
            assert body["index_version"] == real_index.version
            assert [n["user_handle"] for n in body["neighbors"]] == [
                n.user_handle for n in expected
            ]
            assert [n["similarity"] for n in body["neighbors"]] == pytest.approx(
                [n.similarity for n in expected], abs=1e-9
            )
            assert [n["remainder"] for n in body["neighbors"]] == pytest.approx(
                [n.remainder for n in expected], abs=1e-9
            )
            # Errors over real HTTP are problem+json too, including the body limit.
            missing = await http.post("/predict", json={"user_handle": 99_999_999})
            assert missing.status_code == 404
            assert missing.headers["content-type"] == "application/problem+json"
            big = await http.post(
                "/predict",
                content=b'{"user_handle": 1}' + b" " * (70 * 1024),
                headers={"content-type": "application/json"},
            )
            assert big.status_code == 413
            assert big.json()["type"] == "/problems/body-too-large"
    assert_stopped_cleanly(server)


@dataclass
class Outcome:
    sent_at: float
    status: int
    version: str | None


async def test_reload_under_load_drops_nothing(
    real_artifacts_dir: Path, real_data_dir: Path, tmp_path: Path
) -> None:
    artifacts = copy_artifacts(real_artifacts_dir, tmp_path / "artifacts")
    old = (artifacts / "current").resolve().name
    env = {"SIMILARITY_ADMIN_TOKEN": TOKEN}
    max_requests, after_reload, time_limit = 3000, 60, 60.0
    with running_server(artifacts, tmp_path / "server.log", env=env) as server:
        outcomes: list[Outcome] = []
        errors: list[str] = []
        reloaded_at: list[float] = []
        new: list[str] = []
        deadline = time.monotonic() + time_limit

        def done() -> bool:
            if errors or len(outcomes) >= max_requests or time.monotonic() > deadline:
                return True
            if not reloaded_at:
                return False
            return sum(o.sent_at > reloaded_at[0] for o in outcomes) >= after_reload

        async def load(worker: int) -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as http:
                handle = worker + 1
                while not done():
                    handle = handle % 500 + 1
                    sent_at = time.monotonic()
                    try:
                        response = await http.post("/predict", json={"user_handle": handle})
                    except httpx.HTTPError as exc:
                        errors.append(f"{type(exc).__name__}: {exc}")
                        return
                    version = (
                        response.json().get("index_version")
                        if response.status_code == 200
                        else None
                    )
                    outcomes.append(Outcome(sent_at, response.status_code, version))
                    await anyio.sleep(0.005)

        async def publish_and_reload() -> None:
            settings = build_settings(real_data_dir, artifacts, seed=7, recall_sample=50)
            result = await anyio.to_thread.run_sync(build, settings)
            new.append(result.manifest.version)
            async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as http:
                response = await http.post(
                    "/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}
                )
            reloaded_at.append(time.monotonic())
            assert response.status_code == 200, response.text
            assert response.json() == {
                "index_version": result.manifest.version,
                "previous_version": old,
                "changed": True,
            }

        async with anyio.create_task_group() as group:
            for worker in range(4):
                group.start_soon(load, worker)
            group.start_soon(publish_and_reload)

        assert errors == [], server.log_text()[-2000:]
        assert reloaded_at, "the reload did not happen within the time limit"
        assert new[0] != old
        assert [o.status for o in outcomes] == [200] * len(outcomes)
        assert {o.version for o in outcomes} == {old, new[0]}
        later = [o for o in outcomes if o.sent_at > reloaded_at[0]]
        assert len(later) >= after_reload
        assert {o.version for o in later} == {new[0]}
        before = [o for o in outcomes if o.version == old]
        assert len(before) >= 10  # traffic really ran while the new version was being built
    assert_stopped_cleanly(server)


async def test_watcher_follows_a_new_publication(real_artifacts_dir: Path, tmp_path: Path) -> None:
    """Both workers load a newly published version by themselves; /metrics then shows, per
    worker, the new version at 1 and the old one at 0."""
    artifacts = copy_artifacts(real_artifacts_dir, tmp_path / "artifacts")
    old = (artifacts / "current").resolve().name
    env = {"SIMILARITY_WATCH_INTERVAL": "0.2"}
    info = re.compile(r'similarity_index_info\{pid="(\d+)",version="([^"]+)"\} (\S+)')
    with running_server(artifacts, tmp_path / "server.log", env=env, workers=2) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=5.0) as http:
            # Both workers up on the old version first (readiness is one worker's answer).
            deadline = time.monotonic() + START_TIMEOUT
            while server.log_text().count("Application startup complete") < 2:
                assert time.monotonic() < deadline, server.log_text()
                await anyio.sleep(0.1)
            before = info.findall((await http.get("/metrics")).text)
            assert [(v, x) for _, v, x in before] == [(old, "1.0"), (old, "1.0")], before
            data = tiny_dataset(tmp_path / "data")
            settings = build_settings(data, artifacts, recall_sample=0)
            new = (await anyio.to_thread.run_sync(build, settings)).manifest.version
            assert new != old
            series: dict[tuple[str, str], float] = {}
            deadline = time.monotonic() + 15.0
            while time.monotonic() < deadline:
                text = (await http.get("/metrics")).text
                series = {(pid, v): float(x) for pid, v, x in info.findall(text)}
                serving = {pid for (pid, v), x in series.items() if v == new and x == 1.0}
                if len(serving) == 2:
                    break
                await anyio.sleep(0.1)
            pids = {pid for pid, _ in series}
            assert len(pids) == 2, series
            assert series == {(p, v): float(v == new) for p in pids for v in (old, new)}
            response = await http.post("/predict", json={"user_handle": 1, "k": 2})
            assert response.status_code == 200
            assert response.json()["index_version"] == new
            # Customer 5000 existed in the real index, not in the new one.
            gone = await http.post("/predict", json={"user_handle": 5000})
            assert gone.status_code == 404
            assert gone.json()["type"] == "/problems/unknown-user"
    assert_stopped_cleanly(server)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return stat.read_text().split(") ", 1)[1][0] != "Z"  # a zombie is not running
    return False


async def test_two_workers_answer_and_stop_cleanly(
    real_artifacts_dir: Path, real_index: SimilarityIndex, tmp_path: Path
) -> None:
    expected = [n.user_handle for n in real_index.similar_to_user(3, 10)]
    log = tmp_path / "server.log"
    with running_server(real_artifacts_dir, log, workers=2) as server:
        deadline = time.monotonic() + START_TIMEOUT
        while server.log_text().count("Application startup complete") < 2:
            assert time.monotonic() < deadline, server.log_text()
            await anyio.sleep(0.1)
        workers = {
            int(p) for p in re.findall(r"Started server process \[(\d+)\]", server.log_text())
        }
        assert len(workers) == 2
        assert server.process.pid not in workers

        # Fresh connections, several at a time, so the kernel hands them to both workers.
        statuses: list[int] = []

        async def ask(handle: int) -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as http:
                response = await http.post("/predict", json={"user_handle": handle})
                statuses.append(response.status_code)
                if handle == 3:
                    assert [n["user_handle"] for n in response.json()["neighbors"]] == expected

        for start in range(0, 40, 8):
            async with anyio.create_task_group() as group:
                for handle in range(start + 1, start + 9):
                    group.start_soon(ask, handle)
        assert statuses == [200] * 40

        # /metrics is the whole service's, whichever worker answers the scrape: the 40 requests
        # in one total, and one index series per live worker (multiprocess mode).
        for _ in range(4):  # fresh connections: different workers answer
            async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as http:
                text = (await http.get("/metrics")).text
            assert (
                'similarity_requests_total{method="POST",route="/predict",status="200"} 40.0'
                in text
            ), text
            version = real_index.version
            series = set(
                re.findall(rf'similarity_index_info\{{pid="(\d+)",version="{version}"\}} 1.0', text)
            )
            assert {int(pid) for pid in series} == workers, text
        assert all(_alive(pid) for pid in workers)
    assert_stopped_cleanly(server)
    deadline = time.monotonic() + 5.0
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        await anyio.sleep(0.05)
    assert not any(_alive(pid) for pid in workers)
