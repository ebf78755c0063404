"""Command lines: a bad option or an unusable environment is one ``error:`` line, never a traceback.

Exit 2 for a bad option (or environment variable), 1 for an input or environment problem. Each
case runs the real ``python -m similarity_api`` entry point: in process where the command stops
before it configures logging or loads anything, as a subprocess where it gets as far as ingest.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from similarity_api import synth
from similarity_api.__main__ import COMMANDS
from similarity_api.__main__ import main as run
from similarity_api.build import cli as build_cli
from similarity_api.build.ingest import read_tables
from similarity_api.errors import InputError
from similarity_api.serve import OPTIONS as SERVE_OPTIONS
from similarity_api.serve import listen_problem
from similarity_api.serve import parser as serve_parser
from similarity_api.synth import SynthConfig
from tests.conftest import REPO, write_dataset

DAY = "2017-06-01"
TWO: dict[str, Any] = {
    "views": [(1, DAY, "c1", 1, "Beginner", 100), (2, DAY, "c1", 1, "Beginner", 50)],
    "tags": [("c1", "python")],
}
needs_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets the variables it is about; none leak in from the shell that runs pytest."""
    for name in list(os.environ):
        if name.startswith("SIMILARITY_") or name == "PROMETHEUS_MULTIPROC_DIR":
            monkeypatch.delenv(name)


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], status: int, line: str) -> None:
    """``python -m similarity_api ARGV`` exits ``status`` with exactly ``line`` on stderr."""
    assert run(argv) == status
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"error: {line}\n")


def _fails_with(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    environment: dict[str, str],
    argv: list[str],
    line: str,
) -> None:
    """With ``environment`` set, ``argv`` is a bad option: exit 2 with exactly ``line``."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    _fails(capsys, argv, 2, line)


def _subprocess(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMILARITY_")}
    return subprocess.run(
        [sys.executable, "-m", "similarity_api", *argv],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env=env,
        timeout=120,
    )


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "afile"
    path.write_text("not a folder\n")
    return path


# --- the dispatcher --------------------------------------------------------------------------------


def test_an_unknown_command_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    _fails(
        capsys, ["nope"], 2, "unknown command 'nope' (commands: build, serve, generate, evaluate)"
    )


def test_no_command_prints_the_usage_on_stderr_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run([]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: python -m similarity_api COMMAND")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_calls_itself_similarity_api_command(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        run([command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: similarity_api {command} ")


# --- generate --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "line"),
    [
        (["--users", "0"], "--users must be between 1 and 100,000,000, got 0"),
        (["--users", "-5"], "--users must be between 1 and 100,000,000, got -5"),
        (
            ["--users", "100000000000"],
            "--users must be between 1 and 100,000,000, got 100,000,000,000",
        ),
        (["--users", "100000001"], "--users must be between 1 and 100,000,000, got 100,000,001"),
        (
            ["--users", "10", "--courses", "0"],
            "--courses must be between 48 and 1,000,000, got 0",
        ),
        (
            ["--users", "10", "--communities", "0"],
            "--communities must be between 1 and 100,000, got 0",
        ),
        (
            ["--users", "10", "--chunk-size", "0"],
            "--chunk-size must be between 1 and 1,000,000, got 0",
        ),
        (["--users", "10", "--seed", "-1"], "--seed must be 0 or more, got -1"),
    ],
)
def test_generate_bad_option_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, options: list[str], line: str
) -> None:
    out = tmp_path / "out"
    _fails(capsys, ["generate", *options, "--out", str(out)], 2, line)
    assert not out.exists()  # refused before anything was written


def test_generate_into_an_existing_file_is_one_line_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = _a_file(tmp_path)
    _fails(
        capsys,
        ["generate", "--users", "10", "--out", str(path)],
        1,
        f"{path}: output directory is not a directory",
    )


def test_generate_under_a_file_is_one_line_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = _a_file(tmp_path) / "sub"
    _fails(
        capsys,
        ["generate", "--users", "10", "--out", str(path)],
        1,
        f"{path}: cannot create the output directory: {os.strerror(errno.ENOTDIR)}",
    )


def test_generate_help_states_every_default_from_synth_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        run(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = SynthConfig(n_users=1)
    heads = ["--users USERS", "--seed SEED", "--out OUT", "--courses COURSES"]
    heads += ["--communities COMMUNITIES", "--clean", "--chunk-size CHUNK_SIZE"]
    options = text.split(" show this help message and exit ", 1)[1]
    for head, following in zip(heads, [*heads[1:], None], strict=True):
        assert options.startswith(f"{head} ") or f" {head} " in options, head
        help_text = options.split(f"{head} ", 1)[1]
        if following is not None:
            help_text = help_text.split(f" {following} ", 1)[0]
        assert help_text.endswith("]"), (head, help_text)  # every option states its default
    assert f"--seed SEED random seed, 0 or more [{defaults.seed}]" in text
    assert f"memory use, never the output [{defaults.chunk_size}]" in text
    assert "--users USERS customers, between 1 and 100,000,000 [required]" in text
    courses = SynthConfig(n_users=1_000).courses()
    communities = SynthConfig(n_users=1_000_000).communities()
    assert f"[grows with --users: {courses:,} for 1,000," in text
    assert f" {communities:,} for 1,000,000 customers]" in text
    assert synth.MAX_USERS == 100_000_000


# --- build: options name the option and its variable ---------------------------------------------


@pytest.mark.parametrize(
    ("options", "environment", "line"),
    [
        (
            ["--weight-course", "-1"],
            {},
            "--weight-course (SIMILARITY_WEIGHT_COURSE): Input should be greater than or equal to 0",
        ),
        (
            ["--keep", "0"],
            {},
            "--keep (SIMILARITY_BUILD_KEEP_VERSIONS): Input should be greater than or equal to 1",
        ),
        (
            ["--dim", "1"],
            {},
            "--dim (SIMILARITY_BUILD_DIM): Input should be greater than or equal to 2",
        ),
        (
            ["--weight-course", "nan"],
            {},
            "--weight-course (SIMILARITY_WEIGHT_COURSE): must be a finite number, got nan",
        ),
        (
            ["--weight-tag", "inf"],
            {},
            "--weight-tag (SIMILARITY_WEIGHT_TAG): must be a finite number, got inf",
        ),
        (
            [],
            {"SIMILARITY_WEIGHT_INTEREST": "nan"},
            "--weight-interest (SIMILARITY_WEIGHT_INTEREST): must be a finite number, got nan",
        ),
        (
            [],
            {"SIMILARITY_BUILD_N_TREES": "abc"},
            "--n-trees (SIMILARITY_BUILD_N_TREES): "
            "Input should be a valid integer, unable to parse string as an integer",
        ),
        (
            [],
            {"SIMILARITY_BUILD_DETERMINISTIC": "maybe"},
            "--fast (SIMILARITY_BUILD_DETERMINISTIC): "
            "Input should be a valid boolean, unable to interpret input",
        ),
        (  # Annoy takes search_k as a C int: this used to crash the build after all its work
            ["--search-k", "3000000000"],
            {},
            "--search-k (SIMILARITY_BUILD_SEARCH_K): "
            "Input should be less than or equal to 2147483647",
        ),
    ],
)
def test_build_bad_option_names_option_and_variable_exit_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    options: list[str],
    environment: dict[str, str],
    line: str,
) -> None:
    argv = ["build", "--data-dir", str(tmp_path), "--artifacts-dir", str(tmp_path / "art")]
    _fails_with(capsys, monkeypatch, environment, [*argv, *options], line)
    assert not (tmp_path / "art").exists()


def test_build_without_data_dir_says_it_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["build"], 2, "--data-dir (SIMILARITY_BUILD_DATA_DIR) is required")


def test_every_option_named_in_a_message_exists() -> None:
    build_options = {s for a in build_cli.parser()._actions for s in a.option_strings}
    assert set(build_cli.BUILD_OPTIONS.values()) | set(build_cli.WEIGHT_OPTIONS.values()) <= (
        build_options
    )
    serve_options = {s for a in serve_parser()._actions for s in a.option_strings}
    assert set(SERVE_OPTIONS.values()) <= serve_options


# --- build: the artifacts folder is checked before ingest ------------------------------------------


def test_build_into_an_existing_file_fails_before_ingest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = write_dataset(tmp_path / "data", **TWO)
    path = _a_file(tmp_path)
    _fails(
        capsys,
        ["build", "--data-dir", str(data), "--artifacts-dir", str(path)],
        1,
        f"{path}: artifacts directory is not a directory",
    )


def test_build_under_a_file_fails_before_ingest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = write_dataset(tmp_path / "data", **TWO)
    path = _a_file(tmp_path) / "sub"
    _fails(
        capsys,
        ["build", "--data-dir", str(data), "--artifacts-dir", str(path)],
        1,
        f"{path}: cannot create the artifacts directory: {os.strerror(errno.ENOTDIR)}",
    )


@needs_proc
def test_build_into_an_uncreatable_folder_fails_before_ingest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = write_dataset(tmp_path / "data", **TWO)
    _fails(
        capsys,
        ["build", "--data-dir", str(data), "--artifacts-dir", "/proc/x"],
        1,
        f"/proc/x: cannot create the artifacts directory: {os.strerror(errno.ENOENT)}",
    )


def test_build_into_a_read_only_folder_fails_before_ingest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A folder this user may not write in: a 0o555 one, or for root (who may write anywhere
    else) sysfs, which refuses everyone."""
    data = write_dataset(tmp_path / "data", **TWO)
    if os.geteuid() == 0:
        folder = Path("/sys")
        if not folder.is_dir():
            pytest.fail("no /sys on this machine: this test needs a folder root cannot write")
    else:
        folder = tmp_path / "readonly"
        folder.mkdir(mode=0o555)
    _fails(
        capsys,
        ["build", "--data-dir", str(data), "--artifacts-dir", str(folder)],
        1,
        f"{folder}: artifacts directory is not writable: {os.strerror(errno.EACCES)}",
    )


def test_a_missing_artifacts_folder_is_created_with_its_parents(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    assert build_cli.directory_problem(folder, "artifacts directory") is None
    assert folder.is_dir()
    assert list(folder.iterdir()) == []  # the write probe leaves nothing behind


# --- build: the data folder ------------------------------------------------------------------------


def test_data_dir_that_is_a_file_is_not_a_directory(tmp_path: Path) -> None:
    path = _a_file(tmp_path)
    with pytest.raises(InputError) as err:
        read_tables(path)
    assert str(err.value) == f"{path}: data directory is not a directory"
    proc = _subprocess(["build", "--data-dir", str(path), "--artifacts-dir", str(tmp_path / "a")])
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"error: {path}: data directory is not a directory\n"


def test_a_folder_named_like_a_required_file_is_not_a_regular_file(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", **TWO)
    views = data / "user_course_views.csv"
    views.unlink()
    views.mkdir()
    with pytest.raises(InputError) as err:
        read_tables(data)
    assert str(err.value) == f"{views}: required file is not a regular file"
    proc = _subprocess(["build", "--data-dir", str(data), "--artifacts-dir", str(tmp_path / "a")])
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"error: {views}: required file is not a regular file\n"


# --- serve -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "environment", "line"),
    [
        (
            ["--port", "99999"],
            {},
            "--port (SIMILARITY_PORT): Input should be less than or equal to 65535",
        ),
        (
            ["--workers", "0"],
            {},
            "--workers (SIMILARITY_WORKERS): Input should be greater than or equal to 1",
        ),
        (
            [],
            {"SIMILARITY_MAX_BODY_BYTES": "abc"},
            "SIMILARITY_MAX_BODY_BYTES: "
            "Input should be a valid integer, unable to parse string as an integer",
        ),
        (
            [],
            {"SIMILARITY_PORT": "x"},
            "--port (SIMILARITY_PORT): "
            "Input should be a valid integer, unable to parse string as an integer",
        ),
        (
            [],
            {"SIMILARITY_WATCH_INTERVAL": "nan"},
            "SIMILARITY_WATCH_INTERVAL: must be a finite number, got nan",
        ),
        (  # used to start 'ready' and answer every /predict with a 500
            [],
            {"SIMILARITY_SEARCH_K": "3000000000"},
            "SIMILARITY_SEARCH_K: Input should be less than or equal to 2147483647",
        ),
    ],
)
def test_serve_bad_setting_names_option_and_variable_exit_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    options: list[str],
    environment: dict[str, str],
    line: str,
) -> None:
    argv = ["serve", "--artifacts-dir", str(tmp_path), *options]
    _fails_with(capsys, monkeypatch, environment, argv, line)


def test_serve_on_an_unresolvable_host_fails_before_loading_the_index(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    try:  # the resolver's own words for it (DNS down and "not known" read differently)
        socket.getaddrinfo("999.1.1.1", 8000, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        reason = exc.strerror
    else:
        pytest.skip("this resolver resolves 999.1.1.1")
    # No index is published either: the host is checked first, so the host is what is reported.
    _fails(
        capsys,
        ["serve", "--artifacts-dir", str(tmp_path), "--host", "999.1.1.1"],
        1,
        f"cannot listen on 999.1.1.1:8000: {reason}",
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_port_in_use_fails_before_loading_the_index(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, workers: str
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        _fails(
            capsys,
            ["serve", "--artifacts-dir", str(tmp_path), "--port", str(port), "--workers", workers],
            1,
            f"cannot listen on 127.0.0.1:{port}: {os.strerror(errno.EADDRINUSE)}",
        )


def test_serve_on_an_address_of_another_machine_fails(capsys: pytest.CaptureFixture[str]) -> None:
    _fails(
        capsys,
        ["serve", "--host", "192.0.2.1"],  # TEST-NET-1: never an address of this machine
        1,
        f"cannot listen on 192.0.2.1:8000: {os.strerror(errno.EADDRNOTAVAIL)}",
    )


def test_a_free_port_passes_and_serve_goes_on_to_the_index(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert listen_problem("127.0.0.1", port, 1) is None
    assert listen_problem("::1" if socket.has_ipv6 else "127.0.0.1", 0, 2) is None
    assert run(["serve", "--artifacts-dir", str(tmp_path), "--port", str(port)]) == 1
    assert capsys.readouterr().err.startswith("error: no published artifact: ")


def test_serve_with_workers_and_no_watcher_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload reaches one worker; without the watcher the others would never follow."""
    monkeypatch.setenv("SIMILARITY_WATCH_INTERVAL", "0")
    _fails(
        capsys,
        ["serve", "--artifacts-dir", str(tmp_path), "--workers", "2"],
        2,
        "--workers > 1 needs SIMILARITY_WATCH_INTERVAL > 0: a reload reaches one worker, the "
        "others follow a newly published version by watching for it",
    )


def test_build_refuses_a_current_that_is_not_a_link_before_ingest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A real folder named `current` used to be found only at publish time, with a traceback
    after the whole build and a stray `.current.<pid>` link left behind."""
    data = write_dataset(tmp_path / "data", **TWO)
    artifacts = tmp_path / "art"
    (artifacts / "current").mkdir(parents=True)
    _fails(
        capsys,
        ["build", "--data-dir", str(data), "--artifacts-dir", str(artifacts)],
        1,
        f"{artifacts / 'current'} is a folder, not the symbolic link a build publishes as; "
        "move it out of the artifacts folder",
    )
    assert sorted(p.name for p in artifacts.iterdir()) == ["current"]
