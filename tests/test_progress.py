"""The progress line of steps that cannot report their own."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from similarity_api.progress import REFRESH, ticking
from tests.conftest import REPO, write_dataset
from tests.test_build import THREE


def test_ticking_shows_the_step_and_its_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    with ticking("index: build 20 trees", True):
        time.sleep(3 * REFRESH)
    err = capsys.readouterr().err
    frames = [f for f in err.split("\r") if f.strip()]
    assert len(frames) >= 3  # drawn, refreshed while the step ran
    assert all(f.startswith("index: build 20 trees: 00:0") for f in frames)


def test_ticking_off_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with ticking("ingest", False):
        time.sleep(REFRESH)
    assert capsys.readouterr() == ("", "")


def test_build_progress_keeps_log_lines_whole(tmp_path: Path) -> None:
    """With --progress, every stage line starts a line of its own (tqdm clears its line first)."""
    root = tmp_path
    data = write_dataset(root, **THREE)
    proc = subprocess.run(
        [sys.executable, "-m", "similarity_api", "build", "--data-dir", str(data),
         "--artifacts-dir", str(root / "art"), "--dim", "2", "--progress"],
        capture_output=True, check=False, cwd=REPO,  # bytes: text mode would turn \r into \n
    )  # fmt: skip
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "\r" in err  # the progress lines were drawn
    # What a terminal shows of each finished line: the text after its last carriage return.
    finished = err.split("\n")[:-1]
    stages = [line.split("\r")[-1].split()[0] for line in finished if line.split("\r")[-1].strip()]
    assert stages[:4] == ["ingest"] * 4
    assert {"features", "embeddings", "index", "published"} <= set(stages)
