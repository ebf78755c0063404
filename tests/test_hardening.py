"""Hardening: dirty input files, broken artifacts, hostile requests, and nothing leaked.

What tests/test_ingest.py, test_build.py and test_api.py already pin is not repeated here; this
module adds the cases they do not reach. Everything runs on tiny purpose-built data, in process,
except the build command-line runs, which are real subprocesses (run a few at a time).
docs/reliability.md lists every case and the test behind it.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import json
import os
import re
import subprocess
import sys
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio as anyio_lib
import anyio.to_thread
import httpx
import polars as pl
import pytest
from fastapi import FastAPI

from similarity_api.app import create_app
from similarity_api.build.ingest import read_tables
from similarity_api.build.pipeline import BuildResult, build
from similarity_api.errors import BuildError, InputError

from .artifact_damage import (
    ALL_REJECTED,
    ASSESSMENT_ONLY,
    DAMAGE,
    INTEREST_ONLY,
    ZERO_SECONDS,
    edit_manifest,
    publish_copy,
    rebuild_index,
    tiny_dataset,
)
from .conftest import (
    ASSESSMENTS_HEADER,
    INTERESTS_HEADER,
    REPO,
    TAGS_HEADER,
    VIEWS_HEADER,
    build_settings,
    serve_settings,
    serving,
    write_csv,
    write_dataset,
)

PROBLEM = "application/problem+json"
TOKEN = "hardening-token"
#: Signs of a filesystem path or a stack trace in a response body.
LEAKS = (r"/tmp/", r"/work/", r"/home/", r"/root/", r"\.py\b", r"Traceback", r'File "')
CLI_TIMEOUT = 120.0

anyio = pytest.mark.anyio


# --- shared fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """The dirty tiny dataset, built once; tests copy it before changing anything."""
    root = tmp_path_factory.mktemp("hardening")
    return build(build_settings(tiny_dataset(root / "data"), root / "artifacts", recall_sample=0))


@pytest.fixture
async def tiny_client(tiny: BuildResult) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(create_app(serve_settings(tiny.path.parent))) as http:
        yield http


def assert_problem(
    response: httpx.Response, status: int, type_: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM, response.headers
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    if type_ is not None:
        assert body["type"] == type_
    assert_no_leak(response)
    return body


def assert_no_leak(response: httpx.Response, *secrets: str) -> None:
    for pattern in LEAKS:
        assert not re.search(pattern, response.text), f"{pattern} in {response.text[:500]}"
    for secret in secrets:
        assert secret not in response.text, f"{secret!r} leaked in {response.text[:500]}"


def _rejects(tables: Any, file: str) -> list[tuple[int, str]]:
    frame = tables.rejects.filter(pl.col("file") == file)
    return list(zip(frame["line"].to_list(), frame["reason"].to_list(), strict=True))


def _nothing_lost(tables: Any) -> None:
    """Rows read = rows accepted + rows rejected, and every rejection is in the report."""
    for report in tables.files:
        if report.present:
            assert report.rows_read == report.rows_accepted + sum(report.rejected.values())
            reported = tables.rejects.filter(pl.col("file") == report.name).height
            assert reported == sum(report.rejected.values())


VIEWS_HEAD = b'"user_handle","view_date","course_id","author_handle","level","view_time_seconds"\n'
TAGS = b'"course_id","course_tags"\n"c1","python"\n"c2","java"\n'
TWO_VIEWS = b'1,"2017-06-01","c1",1,"B",60\n2,"2017-06-01","c2",1,"B",30\n'


def _files(data: Path, views: bytes, tags: bytes = TAGS) -> Path:
    data.mkdir(parents=True, exist_ok=True)
    (data / "user_course_views.csv").write_bytes(views)
    (data / "course_tags.csv").write_bytes(tags)
    return data


# --- bad input files: build outcomes --------------------------------------------------------------


def test_header_only_optional_files_build_with_zero_rows(tmp_path: Path) -> None:
    view = "2017-06-01"
    data = write_dataset(
        tmp_path / "data",
        views=[
            (1, view, "c1", 1, "B", 60),
            (2, view, "c2", 1, "B", 30),
            (2, view, "c1", 1, "B", 5),
        ],
        tags=[("c1", "python"), ("c2", "java")],
        interests=[],
        assessments=[],
    )
    result = build(build_settings(data, tmp_path / "art", recall_sample=0))
    inputs = result.manifest.inputs
    for name in ("user_interests.csv", "user_assessment_scores.csv"):
        assert inputs[name]["present"] is True
        assert inputs[name]["rows_read"] == inputs[name]["rows_accepted"] == 0
    assert result.manifest.counts["customers_indexed"] == 2


def test_header_only_views_build_on_the_other_signals(tmp_path: Path) -> None:
    data = write_dataset(
        tmp_path / "data",
        views=[],
        tags=[("c1", "python")],
        interests=[
            (1, "python", "2017-01-01 00:00:00"),
            (2, "python", "2017-01-01 00:00:00"),
            (2, "java", "2017-01-01 00:00:00"),
        ],
    )
    result = build(build_settings(data, tmp_path / "art", recall_sample=0))
    assert result.manifest.inputs["user_course_views.csv"]["rows_read"] == 0
    assert result.manifest.counts["customers"] == 2
    assert result.manifest.counts["customers_indexed"] == 2


def test_every_file_header_only_is_a_build_error(tmp_path: Path) -> None:
    data = write_dataset(tmp_path, views=[], tags=[], interests=[], assessments=[])
    with pytest.raises(BuildError) as err:
        read_tables(data)
    assert (
        str(err.value) == f"{data}: no usable rows in any file (see the rejects: 0 rows rejected)"
    )


def test_every_row_rejected_is_a_build_error_counting_them(tmp_path: Path) -> None:
    views = [(1, "bad", "c1", 1, "B", 5), (2, "2017-06-01", "zz", 1, "B", 5)]
    data = write_dataset(
        tmp_path, views=[*views, (3, "2017-06-01", "c1", 1, "B", -1)], tags=[("c1", "python")]
    )
    with pytest.raises(BuildError) as err:
        read_tables(data)
    assert (
        str(err.value) == f"{data}: no usable rows in any file (see the rejects: 3 rows rejected)"
    )


def test_header_only_course_tags_rejects_every_view(tmp_path: Path) -> None:
    data = _files(tmp_path, VIEWS_HEAD + TWO_VIEWS, b'"course_id","course_tags"\n')
    with pytest.raises(BuildError, match=r"no usable rows in any file \(see the rejects: 2 rows"):
        read_tables(data)


@pytest.mark.parametrize(
    ("file", "content", "first_columns"),
    [
        ("user_course_views.csv", TWO_VIEWS, "1, 2017-06-01, c1"),
        ("course_tags.csv", b'"c1","python"\n"c2","java"\n', "c1, python"),
    ],
    ids=["views", "course_tags"],
)
def test_a_data_row_where_the_header_should_be_is_one_clear_error(
    tmp_path: Path, file: str, content: bytes, first_columns: str
) -> None:
    data = _files(tmp_path, VIEWS_HEAD + TWO_VIEWS)
    (data / file).write_bytes(content)
    with pytest.raises(InputError) as err:
        read_tables(data)
    message = str(err.value)
    missing = "user_handle" if file.startswith("user") else "course_id"
    assert message.startswith(
        f"{data / file}: missing column {missing!r} (header has: {first_columns}"
    )
    assert "\n" not in message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"\x1f\x8b\x08\x00" + bytes(64), "cannot be read as CSV"),
        (VIEWS_HEAD.decode().encode("utf-16") + TWO_VIEWS, "missing column 'user_handle'"),
        (
            b"user_handle;view_date;course_id;view_time_seconds\n1;2017-06-01;c1;60\n",
            "missing column 'user_handle'",
        ),
        (
            b"USER_HANDLE,VIEW_DATE,COURSE_ID,VIEW_TIME_SECONDS\n1,2017-06-01,c1,60\n",
            "missing column 'user_handle'",
        ),
        (bytes(range(256)) * 4, "missing column 'user_handle'"),
    ],
    ids=["gzip bytes", "utf-16", "semicolons", "upper-case header", "binary garbage"],
)
def test_unreadable_views_file_is_one_error_naming_it(
    tmp_path: Path, content: bytes, fragment: str
) -> None:
    data = _files(tmp_path, content)
    with pytest.raises(InputError) as err:
        read_tables(data)
    assert str(err.value).startswith(f"{data / 'user_course_views.csv'}: ")
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_old_mac_line_ends_are_one_error_naming_the_file(tmp_path: Path) -> None:
    data = _files(tmp_path, (VIEWS_HEAD + TWO_VIEWS * 400).replace(b"\n", b"\r"))
    with pytest.raises(InputError) as err:
        read_tables(data)
    message = str(err.value)
    assert message.startswith(
        f"{data / 'user_course_views.csv'}: missing column 'view_time_seconds'"
    )
    # the whole file read as one header is quoted only in part (it was 30 kB of message)
    assert len(message) < 400
    assert message.endswith(" characters))")


@pytest.mark.parametrize(
    ("file", "content", "problem"),
    [
        (
            "user_course_views.csv",
            VIEWS_HEAD + TWO_VIEWS + b'3,"2017-06-01,"c1",1,"B",60\n4,"2017-06-01","c1",1,"B",6\n',
            "line 4: malformed quoting",
        ),
        (
            "user_course_views.csv",
            VIEWS_HEAD
            + TWO_VIEWS
            + b'3,"2017-06-01","c1",1,"B",60\n4,"2017-06-01,c1,1,B,6\n'
            + b"5,2017-06-01,c1,1,B,6\n" * 3,
            "line 5: a quoted field is never closed",
        ),
        (
            "course_tags.csv",
            b'"course_id","course_tags"\n"c1","python"\n"c2","ja\nc3,go\nc4,go\n',
            "line 3: a quoted field is never closed",
        ),
    ],
    ids=["stray quote in views", "unclosed quote in views", "unclosed quote in course_tags"],
)
def test_a_csv_parse_error_names_the_file_and_line(
    tmp_path: Path, file: str, content: bytes, problem: str
) -> None:
    data = _files(tmp_path, VIEWS_HEAD + TWO_VIEWS)
    (data / file).write_bytes(content)
    with pytest.raises(InputError) as err:
        read_tables(data)
    assert str(err.value).startswith(f"{data / file}: could not parse input at {problem}")
    assert "\n" not in str(err.value)


# --- bad input rows: counted, never lost ----------------------------------------------------------

ODD_VIEWS = [
    # (line content after the header, expected reason or None when kept, kept seconds)
    (b'1,"2017-06-01","c1",1,"B",inf', "bad_view_time"),
    (b'1,"2017-06-02","c1",1,"B",nan', "bad_view_time"),
    (b'1,"2017-06-03","c1",1,"B",0x10', "bad_view_time"),
    (b'1,"2017-06-04","c1",1,"B",1_000', "bad_view_time"),
    (b'1,"2017-06-05","c1",1,"B",', "bad_view_time"),
    (b'1,"2017-06-06","c1",1,"B",99999999999999999999999', "view_time_over_a_day"),
    (b'1,"2017-06-07","c1",1,"B",86400.5', "view_time_over_a_day"),
    (b'1,"2017-06-08","c1",1,"B",86400', None),
    (b'1,"2017-06-09","c1",1,"B",1e3', None),
    (b'1,"2017-06-10","c1",1,"B", 60 ', None),
    (b'1,"2017-02-30","c1",1,"B",5', "bad_date"),
    (b'1,"2017-13-01","c1",1,"B",5', "bad_date"),
    (b'1,"2017-06-01T00:00:00","c1",1,"B",5', "bad_date"),
    (b'1,"20170601","c1",1,"B",5', "bad_date"),
    (b'1.0,"2017-06-01","c1",1,"B",5', "bad_user_handle"),
    (b'1e3,"2017-06-01","c1",1,"B",5', "bad_user_handle"),
    (b'99999999999999999999,"2017-06-01","c1",1,"B",5', "bad_user_handle"),
    (b' +3 ,"2017-06-01","c1",1,"B",5', None),
    (b'2,"2017-06-01","c1\x00",1,"B",5', "unknown_course"),
    (b'2,"2017-06-01","c\n1",1,"B",5', "unknown_course"),  # a quoted line break
    (b'2,"2017-06-02","c2",1,"B",0', None),
    (b'2,"2017-06-01"', "missing_course_id"),  # a short row: the missing fields are empty
    (b"", "missing_user_handle"),  # a blank line
]


def test_odd_values_are_counted_under_their_reason(tmp_path: Path) -> None:
    data = _files(tmp_path, VIEWS_HEAD + b"\n".join(line for line, _ in ODD_VIEWS) + b"\n")
    tables = read_tables(data)
    _nothing_lost(tables)
    # "line" counts records: it is the physical line until a quoted field holds a line break.
    expected = [(line, reason) for line, (_, reason) in enumerate(ODD_VIEWS, 2) if reason]
    assert _rejects(tables, "user_course_views.csv") == expected
    kept = tables.views.sort("view_date", "user_handle")
    assert kept.select("user_handle", "view_time_seconds").rows() == [
        (3, 5.0),  # " +3 " is customer 3
        (2, 0.0),
        (1, 86400.0),
        (1, 1000.0),  # "1e3" seconds are read as a number
        (1, 60.0),  # surrounding spaces are stripped
    ]


def test_a_one_digit_month_is_accepted_as_a_date(tmp_path: Path) -> None:
    """Lenient, not lost: polars reads 2017-6-1 as 2017-06-01 (view_date only feeds dedupe)."""
    data = _files(
        tmp_path, VIEWS_HEAD + b'1,"2017-6-1","c1",1,"B",5\n2,"2017-06-01","c2",1,"B",5\n'
    )
    tables = read_tables(data)
    assert tables.rejects.height == 0
    assert [str(d) for d in tables.views["view_date"].to_list()] == ["2017-06-01", "2017-06-01"]


def test_a_row_with_extra_fields_is_rejected(tmp_path: Path) -> None:
    data = _files(tmp_path, VIEWS_HEAD + TWO_VIEWS + b'3,"2017-06-01","c1",1,"B",60,99,100\n')
    tables = read_tables(data)
    _nothing_lost(tables)
    assert tables.rejects.select("line", "reason", "field", "value").rows() == [
        (4, "extra_fields", "(beyond the header)", "99,100")
    ]
    assert sorted(tables.views["user_handle"].to_list()) == [1, 2]


def test_extra_fields_are_rejected_in_every_file_and_win_over_other_reasons(
    tmp_path: Path,
) -> None:
    views = (
        VIEWS_HEAD
        + TWO_VIEWS
        + b'3,"2017-06-01",,"c1",1,"B",60\n'  # a stray comma shifts every field: one extra
        + b'4,"2017-06-01","c1",1,"B",60,,,,,,7\n'  # twice the header's width: still a row
        + b'5,"2017-06-01","c1",1,"B",60,\n'  # a trailing comma: an empty extra, kept
        + b'6,"2017-06-01","c1",1,"B",60,,\n'
    )
    # c3: an empty quoted extra is nothing, kept; c4: its only row is rejected, so it is unknown.
    tags = TAGS + b'"c3","go",""\n"c4","","x"\n'
    data = _files(tmp_path, views, tags)
    (data / "user_interests.csv").write_bytes(
        b"user_handle,interest_tag,date_followed\n1,python,2017-01-01 00:00:00,x\n"
    )
    (data / "user_assessment_scores.csv").write_bytes(
        b"user_handle,assessment_tag,user_assessment_date,user_assessment_score\n"
        b"1,python,2017-01-01 00:00:00,100,\n2,python,2017-01-01 00:00:00,100,1\n"
    )
    tables = read_tables(data)
    _nothing_lost(tables)
    assert tables.rejects.select("file", "line", "reason", "value").rows() == [
        ("course_tags.csv", 5, "extra_fields", "x"),
        ("user_assessment_scores.csv", 3, "extra_fields", "1"),
        ("user_course_views.csv", 4, "extra_fields", "60"),
        ("user_course_views.csv", 5, "extra_fields", ",,,,,7"),
        ("user_interests.csv", 2, "extra_fields", "x"),
    ]
    assert sorted(tables.views["user_handle"].to_list()) == [1, 2, 5, 6]
    assert tables.courses["course_id"].to_list() == ["c1", "c2", "c3"]


def test_a_row_more_than_twice_as_wide_as_the_header_is_one_error(tmp_path: Path) -> None:
    wide = b'3,"2017-06-01","c1",1,"B",60' + b",1" * 7 + b"\n"
    data = _files(tmp_path, VIEWS_HEAD + TWO_VIEWS + wide)
    with pytest.raises(InputError) as err:
        read_tables(data)
    assert str(err.value) == (
        f"{data / 'user_course_views.csv'}: could not parse input at line 4: the row has 13 "
        "fields, the header 6: too many to read as a rejected row"
    )


def test_duplicate_header_columns_use_the_first(tmp_path: Path) -> None:
    views = b"user_handle,view_date,course_id,view_time_seconds,view_time_seconds\n"
    data = _files(tmp_path, views + b"1,2017-06-01,c1,60,70\n2,2017-06-01,c2,5,6\n")
    tables = read_tables(data)
    _nothing_lost(tables)
    assert tables.views["view_time_seconds"].to_list() == [60.0, 5.0]


def test_unicode_tags_are_normalised(tmp_path: Path) -> None:
    tags = '"course_id","course_tags"\n"c1","RÉSEAU"\n"c1","🐍"\n"c2"," C# "\n"c2","日本語"\n'
    data = _files(tmp_path, VIEWS_HEAD + TWO_VIEWS, tags.encode())
    tables = read_tables(data)
    assert tables.rejects.height == 0
    assert tables.course_tags.rows() == [
        ("c1", "réseau"),
        ("c1", "🐍"),
        ("c2", "c#"),
        ("c2", "日本語"),
    ]


# --- dirty customers, end to end through the API ------------------------------------------------


def test_the_tiny_build_reports_every_dirty_row(tiny: BuildResult) -> None:
    rejected = tiny.rejected
    assert rejected["user_course_views.csv"] == {
        "bad_date": 1,
        "negative_view_time": 1,
        "unknown_course": 1,
    }
    assert rejected["user_assessment_scores.csv"] == {"score_out_of_range": 1}
    lines = (tiny.path / "rejects.csv").read_text().splitlines()
    assert len(lines) - 1 == tiny.manifest.counts["rows_rejected"] == 4


@anyio
async def test_unicode_tags_reach_users_top_tags(tiny_client: httpx.AsyncClient) -> None:
    one = (await tiny_client.get("/users/1")).json()["summary"]
    assert one["top_tags"] == ["réseau", "ml", "java"]
    three = (await tiny_client.get("/users/3")).json()["summary"]
    assert three["top_tags"][0] == "c#"
    assert set(three["top_tags"][1:3]) == {"日本語", "🐍"}
    assert three["top_tags"][3] == "réseau"

    predicted = (await tiny_client.post("/predict", json={"user_handle": 3, "k": 3})).json()
    features = {s["feature"] for n in predicted["neighbors"] for s in n["shared"]}
    assert features & {"tag:c#", "tag:日本語", "tag:🐍", "tag:réseau"}

    # A profile may name the tags in any case and with spaces, as in the files.
    profile = await tiny_client.post(
        "/predict/profile", json={"course_tags": {" RÉSEAU ": 600, "🐍": 60}, "k": 3}
    )
    assert profile.status_code == 200, profile.text
    assert profile.json()["ignored"] == {}


@anyio
async def test_customers_in_one_file_only_are_compared(tiny_client: httpx.AsyncClient) -> None:
    interest = (await tiny_client.get(f"/users/{INTEREST_ONLY}")).json()
    assert interest["indexed"] is True
    assert interest["summary"]["courses_viewed"] == 0
    assert interest["summary"]["interests"] == 1
    assessment = (await tiny_client.get(f"/users/{ASSESSMENT_ONLY}")).json()
    assert assessment["indexed"] is True
    assert assessment["summary"]["assessments"] == 1
    for handle in (INTEREST_ONLY, ASSESSMENT_ONLY):
        response = await tiny_client.post("/predict", json={"user_handle": handle, "k": 3})
        assert response.status_code == 200
        assert len(response.json()["neighbors"]) == 3
    # Customer 1 also follows python: the interest-only customer shares that.
    shared = await tiny_client.post("/predict", json={"user_handle": INTEREST_ONLY, "k": 1})
    assert shared.json()["neighbors"][0]["user_handle"] == 1


@anyio
async def test_a_customer_whose_every_row_was_rejected_is_unknown(
    tiny: BuildResult, tiny_client: httpx.AsyncClient
) -> None:
    for response in (
        await tiny_client.get(f"/users/{ALL_REJECTED}"),
        await tiny_client.post("/predict", json={"user_handle": ALL_REJECTED}),
    ):
        body = assert_problem(response, 404, "/problems/unknown-user")
        assert body["user_handle"] == ALL_REJECTED
        assert body["index_version"] == tiny.manifest.version
    zero = await tiny_client.post("/predict", json={"user_handle": ZERO_SECONDS})
    body = assert_problem(zero, 404, "/problems/no-comparable-activity")
    assert body["index_version"] == tiny.manifest.version


# --- the build command line: one error line, exit 1, no traceback ---------------------------------


# One case per place the build can refuse its input; the variants of each place are pinned in
# process above and in test_ingest.py (a missing file runs as a subprocess in test_build.py).
@dataclass(frozen=True)
class CliCase:
    make: Callable[[Path], Path]  # builds the data folder under the given root, returns it
    fragment: str  # the error line must contain this (and the file it names, when there is one)


def _views_only(views: bytes, tags: bytes = TAGS) -> Callable[[Path], Path]:
    return lambda root: _files(root / "data", views, tags)


def _dataset(**files: Any) -> Callable[[Path], Path]:
    return lambda root: write_dataset(root / "data", **files)


def _empty_tags(root: Path) -> Path:
    data = _files(root / "data", VIEWS_HEAD + TWO_VIEWS)
    (data / "course_tags.csv").write_bytes(b"")
    return data


def _header_only(root: Path) -> Path:
    data = root / "data"
    data.mkdir()
    for name, header in (
        ("user_course_views.csv", VIEWS_HEADER),
        ("course_tags.csv", TAGS_HEADER),
        ("user_interests.csv", INTERESTS_HEADER),
        ("user_assessment_scores.csv", ASSESSMENTS_HEADER),
    ):
        write_csv(data / name, header, [])
    return data


DAY = "2017-06-01"
CLI_CASES: dict[str, CliCase] = {
    "data folder missing": CliCase(lambda root: root / "nowhere", "data directory does not exist"),
    "empty file": CliCase(_empty_tags, "course_tags.csv: file is empty"),
    "data row as header": CliCase(
        _views_only(TWO_VIEWS), "user_course_views.csv: missing column 'user_handle'"
    ),
    "gzip bytes": CliCase(
        _views_only(b"\x1f\x8b\x08\x00" + bytes(64)), "user_course_views.csv: cannot be read as CSV"
    ),
    "unclosed quote": CliCase(
        _views_only(VIEWS_HEAD + TWO_VIEWS + b'3,"2017-06-01,"c1",1,"B",60\n'),
        "user_course_views.csv: could not parse input at line 4",
    ),
    "every file header-only": CliCase(_header_only, "no usable rows in any file"),
    "only zero-second views": CliCase(
        _dataset(views=[(1, DAY, "c1", 1, "B", 0), (2, DAY, "c1", 1, "B", 0)], tags=[("c1", "x")]),
        "no customer has comparable activity",
    ),
    "one customer": CliCase(
        _dataset(views=[(1, DAY, "c1", 1, "B", 5)], tags=[("c1", "x")]),
        "at least 2 are needed",
    ),
}


@pytest.fixture(scope="module")
def cli_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """Every CLI case as a real ``python -m similarity_api build``, three at a time."""
    root = tmp_path_factory.mktemp("cli")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMILARITY_")}
    env["OPENBLAS_NUM_THREADS"] = "1"

    def run(item: tuple[int, str]) -> tuple[str, tuple[Path, subprocess.CompletedProcess[str]]]:
        number, name = item
        case_root = root / f"case{number}"
        case_root.mkdir()
        data = CLI_CASES[name].make(case_root)
        command = [
            sys.executable,
            "-m",
            "similarity_api",
            "build",
            "--data-dir",
            str(data),
            "--artifacts-dir",
            str(case_root / "artifacts"),
            "--recall-sample",
            "0",
        ]
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
            env=env,
            timeout=CLI_TIMEOUT,
        )
        return name, (data, proc)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(run, enumerate(CLI_CASES)))


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_build_cli_failure_is_one_error_line(
    cli_runs: dict[str, tuple[Path, subprocess.CompletedProcess[str]]], case: str
) -> None:
    data, proc = cli_runs[case]
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.split("\n")
    assert lines[-1] == ""  # the error ends with a newline ...
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [lines[-2]], proc.stderr  # ... and it is the one and only error line, last
    assert CLI_CASES[case].fragment in errors[0]
    assert str(data) in errors[0]  # it names the file or folder it is about
    # Everything before it is stage progress ("ingest ...") or a warning, never a second error.
    assert all(not line.lower().startswith(("error", "exception")) for line in lines[:-2])
    assert not any((data.parent / "artifacts").glob("2*"))  # nothing was published


def test_build_cli_bad_option_exits_2_with_one_error_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "similarity_api",
            "build",
            "--data-dir",
            str(tmp_path),
            "--dim",
            "1",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=CLI_TIMEOUT,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "error: --dim (SIMILARITY_BUILD_DIM): Input should be greater than or equal to 2\n"
    )


# --- broken artifacts: a reload refuses them and the old index keeps serving ---------------------


ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Reloadable:
    """A served copy of the tiny artifact (``good``) in ``artifacts``, with the admin token set."""

    app: FastAPI
    http: httpx.AsyncClient
    good: Path
    artifacts: Path

    def publish_newer(self, name: str, **manifest: Any) -> Path:
        """A copy of ``good`` published as a new version ``name`` (the manifest says so too)."""
        newer = publish_copy(self.good, self.artifacts, name)
        edit_manifest(version=name, **manifest)(newer)
        return newer


@contextlib.asynccontextmanager
async def reloadable(
    tiny: BuildResult, tmp_path: Path, **settings: Any
) -> AsyncIterator[Reloadable]:
    artifacts = tmp_path / "artifacts"
    good = publish_copy(tiny.path, artifacts, tiny.path.name)
    app = create_app(serve_settings(artifacts, admin_token=TOKEN, **settings))
    async with serving(app) as http:
        yield Reloadable(app=app, http=http, good=good, artifacts=artifacts)


@anyio
@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_reload_refuses_a_broken_artifact_and_keeps_serving(
    tiny: BuildResult, tmp_path: Path, damage: str
) -> None:
    async with reloadable(tiny, tmp_path) as live:
        http = live.http
        before = await http.post("/predict", json={"user_handle": 1, "k": 5})
        assert before.status_code == 200

        broken = publish_copy(live.good, live.artifacts, "29991231T235959999Z-broken")
        corrupt, fragment = DAMAGE[damage]
        corrupt(broken)

        failed = await http.post("/admin/reload", headers=ADMIN)
        body = assert_problem(failed, 409, "/problems/reload-failed")
        assert fragment in body["detail"]
        assert "similarity_api build" in body["detail"]
        assert str(tmp_path) not in failed.text

        after = await http.post("/predict", json={"user_handle": 1, "k": 5})
        assert after.status_code == 200
        assert after.json() == before.json()
        ready = await http.get("/readyz")
        assert ready.json() == {"status": "ready", "index_version": tiny.manifest.version}
        assert 'similarity_reloads_total{outcome="failed"} 1.0' in (await http.get("/metrics")).text


@anyio
async def test_an_angular_artifact_from_before_the_metric_change_still_serves(
    tiny: BuildResult, tmp_path: Path
) -> None:
    async with reloadable(tiny, tmp_path) as live:
        http = live.http
        before = await http.post("/predict", json={"user_handle": 1, "k": 5})
        assert before.status_code == 200

        legacy = live.publish_newer("29991231T235959999Z-angular", metric="angular")
        rebuild_index(legacy, "angular")
        reload = await http.post("/admin/reload", headers=ADMIN)
        assert reload.json()["changed"] is True, reload.text
        assert (await http.get("/index")).json()["metric"] == "angular"
        after = await http.post("/predict", json={"user_handle": 1, "k": 5})
        # 20 customers: both metrics' searches see every one, and ranking is by exact cosine
        assert after.json()["neighbors"] == before.json()["neighbors"]


@anyio
async def test_the_loaded_index_is_frozen_out_of_the_collector_and_a_replaced_one_freed(
    tiny: BuildResult, tmp_path: Path
) -> None:
    async with reloadable(tiny, tmp_path) as live:
        state = live.app.state.service
        assert gc.get_freeze_count() > 0
        old = weakref.ref(state.index)
        assert (await live.http.post("/predict", json={"user_handle": 1})).status_code == 200

        newer = live.publish_newer("29991231T235959999Z-newer")
        reload = await live.http.post("/admin/reload", headers=ADMIN)
        assert reload.json()["changed"] is True, reload.text
        assert state.index.version == newer.name
        gc.collect()
        assert old() is None  # frozen before, yet not kept: the reload unfroze and collected it


@anyio
async def test_a_reload_does_not_wait_for_a_lookup_thread(
    tiny: BuildResult, tmp_path: Path
) -> None:
    async with reloadable(tiny, tmp_path, lookup_threads=1) as live:
        newer = live.publish_newer("29991231T235959999Z-newer")
        lookups = anyio_lib.to_thread.current_default_thread_limiter()
        holder = object()
        await lookups.acquire_on_behalf_of(holder)  # the one lookup thread is busy
        try:
            with anyio_lib.fail_after(10):
                reload = await live.http.post("/admin/reload", headers=ADMIN)
        finally:
            lookups.release_on_behalf_of(holder)
        assert reload.json()["changed"] is True, reload.text
        assert live.app.state.service.index.version == newer.name


@anyio
async def test_a_dangling_current_is_refused_and_the_old_index_serves(
    tiny: BuildResult, tmp_path: Path
) -> None:
    artifacts = tmp_path / "artifacts"
    publish_copy(tiny.path, artifacts, tiny.path.name)
    app = create_app(serve_settings(artifacts, admin_token=TOKEN))
    async with serving(app) as http:
        gone = publish_copy(tiny.path, artifacts, "29991231T235959999Z-gone")
        for item in gone.iterdir():
            item.unlink()
        gone.rmdir()
        failed = await http.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        body = assert_problem(failed, 409, "/problems/reload-failed")
        assert body["detail"].startswith("no published artifact")
        assert (await http.post("/predict", json={"user_handle": 1})).status_code == 200


@anyio
async def test_waiting_for_a_broken_artifact_answers_503_without_paths(
    tiny: BuildResult, tmp_path: Path
) -> None:
    artifacts = tmp_path / "artifacts"
    broken = publish_copy(tiny.path, artifacts, tiny.path.name)
    DAMAGE["users.npy checksum mismatch"][0](broken)
    async with serving(create_app(serve_settings(artifacts, wait_for_index=True))) as http:
        for response in (
            await http.get("/readyz"),
            await http.post("/predict", json={"user_handle": 1}),
        ):
            body = assert_problem(response, 503, "/problems/index-not-ready")
            assert "users.npy checksum mismatch" in body["detail"]
            assert str(tmp_path) not in response.text


# --- hostile requests: always a problem+json 4xx ----------------------------------------------------

JSON = {"content-type": "application/json"}
INVALID = "/problems/invalid-request"


def _deep(depth: int) -> bytes:
    return b'{"user_handle": ' + b"[" * depth + b"]" * depth + b"}"


HOSTILE: dict[str, tuple[str, str, bytes | None, dict[str, Any], int, str | None]] = {
    # id: (method, path, body, headers, status, problem type)
    "k huge": (
        "POST",
        "/predict",
        b'{"user_handle": 1, "k": 1' + b"0" * 40 + b"}",
        JSON,
        422,
        INVALID,
    ),
    "k negative": ("POST", "/predict", b'{"user_handle": 1, "k": -5}', JSON, 422, INVALID),
    "k 100.0": ("POST", "/predict", b'{"user_handle": 1, "k": 100.0}', JSON, 422, INVALID),
    "k null": ("POST", "/predict", b'{"user_handle": 1, "k": null}', JSON, 422, INVALID),
    "k Infinity": ("POST", "/predict", b'{"user_handle": 1, "k": Infinity}', JSON, 422, INVALID),
    "k 1e400": ("POST", "/predict", b'{"user_handle": 1, "k": 1e400}', JSON, 422, INVALID),
    "handle NaN": ("POST", "/predict", b'{"user_handle": NaN}', JSON, 422, INVALID),
    "handle -Infinity": ("POST", "/predict", b'{"user_handle": -Infinity}', JSON, 422, INVALID),
    "handle 10**100": (
        "POST",
        "/predict",
        b'{"user_handle": 1' + b"0" * 100 + b"}",
        JSON,
        422,
        INVALID,
    ),
    "handle of 5000 digits": (
        "POST",
        "/predict",
        b'{"user_handle": 1' + b"0" * 5000 + b"}",
        JSON,
        422,
        INVALID,
    ),
    "handle string of 101 digits": (
        "POST",
        "/predict",
        b'{"user_handle": "1' + b"0" * 100 + b'"}',
        JSON,
        422,
        INVALID,
    ),
    "handle Arabic-Indic digit": (
        "POST",
        "/predict",
        '{"user_handle": "٣"}'.encode(),
        JSON,
        422,
        INVALID,
    ),
    "handle empty string": ("POST", "/predict", b'{"user_handle": ""}', JSON, 422, INVALID),
    "handle NUL": ("POST", "/predict", b'{"user_handle": "\\u0000"}', JSON, 422, INVALID),
    "handle nested garbage": (
        "POST",
        "/predict",
        b'{"user_handle": {"a": [1, {"b": null}]}}',
        JSON,
        422,
        INVALID,
    ),
    "handle list": ("POST", "/predict", b'{"user_handle": [1]}', JSON, 422, INVALID),
    "JSON null": ("POST", "/predict", b"null", JSON, 422, INVALID),
    "JSON number": ("POST", "/predict", b"1", JSON, 422, INVALID),
    "lone surrogate": ("POST", "/predict", b'"\\ud800"', JSON, 422, INVALID),
    "trailing garbage": ("POST", "/predict", b'{"user_handle": 1}x', JSON, 422, INVALID),
    "byte-order mark of UTF-16": ("POST", "/predict", b"\xff\xfe{}", JSON, 422, INVALID),
    "bytes that are not UTF-8": (
        "POST",
        "/predict",
        b'{"user_handle": "caf\xe9"}',
        JSON,
        422,
        INVALID,
    ),
    "nested 30,000 deep": ("POST", "/predict", b"[" * 30_000 + b"]" * 30_000, JSON, 422, INVALID),
    "nested 20,000 deep in a field": ("POST", "/predict", _deep(20_000), JSON, 422, INVALID),
    "nested 500 deep in a field": ("POST", "/predict", _deep(500), JSON, 422, INVALID),
    "no content-type": ("POST", "/predict", b'{"user_handle": 1}', {}, 415, None),
    "no content-type, malformed body": ("POST", "/predict", b'{"user_handle": 1', {}, 415, None),
    "no content-type, no body": ("POST", "/predict", None, {}, 422, INVALID),
    "form content-type": (
        "POST",
        "/predict",
        b"user_handle=1",
        {"content-type": "application/x-www-form-urlencoded"},
        415,
        None,
    ),
    "multipart content-type": (
        "POST",
        "/predict",
        b"--x\r\n",
        {"content-type": "multipart/form-data; boundary=x"},
        415,
        None,
    ),
    "batch of 10,000 handles": (
        "POST",
        "/predict/batch",
        json.dumps({"user_handles": list(range(1, 10_001))}).encode(),
        JSON,
        422,
        INVALID,
    ),
    "batch of 10,000 garbage handles": (
        "POST",
        "/predict/batch",
        json.dumps({"user_handles": ["x"] * 10_000}).encode(),
        JSON,
        422,
        INVALID,
    ),
    "batch of mixed garbage": (
        "POST",
        "/predict/batch",
        json.dumps({"user_handles": [1, "x", None, 1.5, True, {"a": 1}, [2]]}).encode(),
        JSON,
        422,
        INVALID,
    ),
    "batch k 0": ("POST", "/predict/batch", b'{"user_handles": [1], "k": 0}', JSON, 422, INVALID),
    "batch not a list": ("POST", "/predict/batch", b'{"user_handles": 1}', JSON, 422, INVALID),
    "profile with 1,001 tags": (
        "POST",
        "/predict/profile",
        json.dumps({"course_tags": {f"t{i}": 1 for i in range(1001)}}).encode(),
        JSON,
        422,
        INVALID,
    ),
    "profile with 1,001 interests": (
        "POST",
        "/predict/profile",
        json.dumps({"interests": ["python"] * 1001}).encode(),
        JSON,
        422,
        INVALID,
    ),
    "profile with 1,000 unknown tags": (
        "POST",
        "/predict/profile",
        json.dumps({"course_tags": {f"t{i}": 1 for i in range(1000)}}).encode(),
        JSON,
        422,
        "/problems/empty-profile",
    ),
    "profile NaN seconds": (
        "POST",
        "/predict/profile",
        b'{"course_tags": {"python": NaN}}',
        JSON,
        422,
        INVALID,
    ),
    "profile Infinity seconds": (
        "POST",
        "/predict/profile",
        b'{"course_tags": {"python": Infinity}}',
        JSON,
        422,
        INVALID,
    ),
    "profile 1e308 seconds": (
        "POST",
        "/predict/profile",
        b'{"course_tags": {"python": 1e308}}',
        JSON,
        422,
        INVALID,
    ),
    "profile negative seconds": (
        "POST",
        "/predict/profile",
        b'{"course_tags": {"python": -1}}',
        JSON,
        422,
        INVALID,
    ),
    "profile zero seconds only": (
        "POST",
        "/predict/profile",
        b'{"course_tags": {"python": 0}}',
        JSON,
        422,
        "/problems/empty-profile",
    ),
    "profile empty label": (
        "POST",
        "/predict/profile",
        b'{"course_tags": {"": 5}}',
        JSON,
        422,
        INVALID,
    ),
    "profile 201-character label": (
        "POST",
        "/predict/profile",
        json.dumps({"interests": ["x" * 201]}).encode(),
        JSON,
        422,
        INVALID,
    ),
    "profile score 301": (
        "POST",
        "/predict/profile",
        b'{"assessments": {"python": 301}}',
        JSON,
        422,
        INVALID,
    ),
    "profile as a list of pairs": (
        "POST",
        "/predict/profile",
        b'{"course_tags": [["python", 5]]}',
        JSON,
        422,
        INVALID,
    ),
    "profile unknown field": (
        "POST",
        "/predict/profile",
        b'{"course_tags": {}, "tags": {}}',
        JSON,
        422,
        INVALID,
    ),
    "profile empty": ("POST", "/predict/profile", b"{}", JSON, 422, "/problems/empty-profile"),
    "users 1e3": ("GET", "/users/1e3", None, {}, 422, INVALID),
    "users NUL": ("GET", "/users/%00", None, {}, 422, INVALID),
    "users 10,000 digits": ("GET", "/users/" + "9" * 10_000, None, {}, 422, INVALID),
    "users -0": ("GET", "/users/-0", None, {}, 422, INVALID),
    "users +1": ("GET", "/users/+1", None, {}, 422, INVALID),
    "users 1.0": ("GET", "/users/1.0", None, {}, 422, INVALID),
    "handle 1.0": ("POST", "/predict", b'{"user_handle": 1.0}', JSON, 422, INVALID),
    "handle +1": ("POST", "/predict", b'{"user_handle": "+1"}', JSON, 422, INVALID),
    "batch k 100 for 1,000 handles": (
        "POST",
        "/predict/batch",
        json.dumps({"user_handles": list(range(1, 1001)), "k": 100}).encode(),
        JSON,
        422,
        INVALID,
    ),
    "OPTIONS": ("OPTIONS", "/predict", None, {}, 405, None),
    "TRACE": ("TRACE", "/predict", None, {}, 405, None),
    "reload with a 10 kB token": (
        "POST",
        "/admin/reload",
        None,
        {"authorization": "Bearer " + "x" * 10_000},
        401,
        None,
    ),
    "reload with a latin-1 token": (
        "POST",
        "/admin/reload",
        None,
        {"authorization": b"Bearer caf\xe9"},
        401,
        None,
    ),
    "reload with the token in lower case scheme": (
        "POST",
        "/admin/reload",
        None,
        {"authorization": f"bearer {TOKEN}"},
        401,
        None,
    ),
    "10 MB body": (
        "POST",
        "/predict",
        b'{"user_handle": 1}' + b" " * (10 * 1024 * 1024),
        JSON,
        413,
        "/problems/body-too-large",
    ),
}


@pytest.fixture
async def hostile_client(tiny: BuildResult) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(serve_settings(tiny.path.parent, admin_token=TOKEN))
    async with serving(app) as http:
        yield http


@anyio
@pytest.mark.parametrize("case", list(HOSTILE))
async def test_hostile_request_is_a_problem_4xx(
    hostile_client: httpx.AsyncClient, case: str
) -> None:
    method, path, body, headers, status, type_ = HOSTILE[case]
    response = await hostile_client.request(method, path, content=body, headers=headers)
    problem = assert_problem(response, status, type_)
    if status == 422 and type_ == INVALID:
        assert 1 <= len(problem["errors"]) <= 20  # bounded, whatever the size of the garbage
    assert len(response.content) < 200_000
    assert TOKEN not in response.text


@anyio
async def test_a_streamed_10mb_body_is_cut_off_at_the_limit(
    hostile_client: httpx.AsyncClient,
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"user_handles": ['
        for _ in range(10 * 1024):
            sent += 1024
            yield b"1," * 512

    response = await hostile_client.post("/predict/batch", content=chunks(), headers=JSON)
    assert_problem(response, 413, "/problems/body-too-large")
    assert "content-length" not in response.request.headers


@anyio
async def test_lenient_inputs_are_documented_not_errors(hostile_client: httpx.AsyncClient) -> None:
    """Accepted on purpose (or by pydantic's lax mode): recorded so a change is noticed."""
    spaced = await hostile_client.post("/predict", json={"user_handle": " 1 ", "k": 2})
    assert spaced.status_code == 200
    assert spaced.json()["user_handle"] == 1
    duplicate_key = await hostile_client.post(
        "/predict", content=b'{"user_handle": 1, "user_handle": 2, "k": 2}', headers=JSON
    )
    assert duplicate_key.json()["user_handle"] == 2  # the last one wins, as in json.loads
    string_seconds = await hostile_client.post(
        "/predict/profile", json={"course_tags": {"python": "5"}, "k": 2}
    )
    assert string_seconds.status_code == 200
    zeros = await hostile_client.get("/users/" + "0" * 30 + "1")  # digits are digits
    assert zeros.status_code == 200
    assert zeros.json()["user_handle"] == 1
    for media in (
        "application/merge-patch+json",
        "APPLICATION/JSON",
        "application/json; charset=latin-1",
    ):
        response = await hostile_client.post(
            "/predict", content=b'{"user_handle": 1, "k": 2}', headers={"content-type": media}
        )
        assert response.status_code == 200, media


# --- error bodies never carry paths or stack traces -------------------------------------------------


@anyio
async def test_no_error_body_carries_a_path_or_a_trace(tiny: BuildResult, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    publish_copy(tiny.path, artifacts, tiny.path.name)
    app = create_app(serve_settings(artifacts, admin_token=TOKEN))

    async def boom() -> None:
        raise RuntimeError(f"{tmp_path}/secret.py: Traceback (most recent call last)")

    # A route that fails the way an unforeseen bug would: what the 500 handler sends back.
    app.add_api_route("/boom", boom)
    seen: dict[int, httpx.Response] = {}
    async with serving(app, raise_app_exceptions=False) as http:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        responses = [
            await http.get("/no-such-route"),  # 404
            await http.post("/predict", json={"user_handle": 999_999}),  # 404 unknown
            await http.post("/predict", json={"user_handle": ZERO_SECONDS}),  # 404 inactive
            await http.get("/predict"),  # 405
            await http.post("/predict", json={"user_handle": 0}),  # 422
            await http.post("/predict", content=b'{"user_handle": "caf\xe9"}', headers=JSON),  # 422
            await http.post("/predict/profile", json={"interests": ["nope"]}),  # 422 empty
            await http.post("/predict", content=b"x" * 70_000, headers=JSON),  # 413
            await http.post("/predict", content=b"{}", headers={"content-type": "text/csv"}),  # 415
            await http.post("/admin/reload", headers={"Authorization": "Bearer wrong"}),  # 401
            await http.get("/boom"),  # 500
        ]
        broken = publish_copy(tiny.path, artifacts, "29991231T235959999Z-broken")
        DAMAGE["users.npy checksum mismatch"][0](broken)
        responses.append(await http.post("/admin/reload", headers=auth))  # 409
    async with serving(create_app(serve_settings(tmp_path / "empty", wait_for_index=True))) as http:
        responses.append(await http.get("/readyz"))  # 503
    async with serving(create_app(serve_settings(tiny.path.parent))) as http:
        responses.append(await http.post("/admin/reload", headers=auth))  # 404 reload disabled
    for response in responses:
        seen.setdefault(response.status_code, response)
        assert response.headers["content-type"].split(";")[0] == PROBLEM
        assert_no_leak(response, str(tmp_path), TOKEN, "secret")
    assert set(seen) == {401, 404, 405, 409, 413, 415, 422, 500, 503}
    assert seen[500].json() == {
        "type": "/problems/internal",
        "title": "Internal error",
        "status": 500,
        "detail": "an internal error occurred; it has been logged",
    }


# --- security: static properties ----------------------------------------------------------------------


def test_admin_token_is_compared_in_constant_time() -> None:
    tree = ast.parse((REPO / "src" / "similarity_api" / "routes.py").read_text())
    reload = next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.AsyncFunctionDef) and node.name == "admin_reload"
    )
    calls = [ast.unparse(n.func) for n in ast.walk(reload) if isinstance(n, ast.Call)]
    assert "hmac.compare_digest" in calls
    # ... and the token is never compared with == / != (which stops at the first differing byte).
    compared = [
        ast.unparse(n)
        for n in ast.walk(reload)
        if isinstance(n, ast.Compare) and any(isinstance(o, ast.Eq | ast.NotEq) for o in n.ops)
    ]
    assert not [c for c in compared if re.search(r"token|expected|given|authorization", c)], (
        compared
    )
    # ... nor logged.
    assert "logger" not in ast.unparse(reload)


def test_container_runs_as_a_non_root_user() -> None:
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    last_from = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    users = [line.split()[1] for line in lines[last_from:] if line.upper().startswith("USER ")]
    assert users, "no USER after the last FROM: the service would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    # The user is created in the final stage with a non-zero uid.
    created = [line for line in lines[last_from:] if "useradd" in line or "adduser" in line]
    assert any(re.search(rf"\b{re.escape(user)}\b", line) for line in created)
    uid = re.search(r"--uid\s+(\d+)", " ".join(created))
    assert uid is None or int(uid.group(1)) != 0
