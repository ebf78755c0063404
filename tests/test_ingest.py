"""Ingest: every dirty case is counted under its reason, and nothing is lost."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from similarity_api.build.ingest import read_tables
from similarity_api.errors import InputError
from tests.conftest import write_csv, write_dataset

VIEWS = [
    (1, "2017-06-01", "c1", 10, "Beginner", 100),  # line 2: ok
    (1, "2017-06-01", "c1", 10, "Beginner", 50),  # 3: same day again, other seconds: ok, adds up
    (1, "2017-06-01", "c1", 10, "Beginner", 100),  # 4: exact duplicate of line 2
    ("", "2017-06-01", "c1", 10, "Beginner", 100),  # 5: missing user
    ("abc", "2017-06-01", "c1", 10, "Beginner", 100),  # 6: non-numeric user
    (0, "2017-06-01", "c1", 10, "Beginner", 100),  # 7: user 0
    (1, "06/01/2017", "c1", 10, "Beginner", 100),  # 8: date in another format
    (1, "2017-06-01", "zzz", 10, "Beginner", 100),  # 9: course not in course_tags
    (1, "2017-06-02", "c1", 10, "Beginner", -5),  # 10: negative seconds
    (1, "2017-06-03", "c1", 10, "Beginner", "abc"),  # 11: non-numeric seconds
    (1, "2017-06-04", "c1", 10, "Beginner", 100000),  # 12: more than a day
    (2, "2017-06-01", "c2", 10, "Beginner", 12.5),  # 13: fractional seconds: ok
    (2, "2017-06-01", "", 10, "Beginner", 10),  # 14: empty course id
    (2, "2017-06-02", "c3", 11, "Advanced", 200),  # 15: ok
]
TAGS = [
    ("c1", "python"),  # ok
    ("c1", "Python "),  # normalises to python: duplicate
    ("c2", ""),  # empty tag: c2 stays a known course without tags
    ("c3", "aws"),
    ("c3", "cloud"),
    ("", "x"),  # no course id
]
INTERESTS = [
    (1, "python", "2017-06-01 10:00:00"),
    (1, "python", "2017-06-01 10:00:00"),  # exact duplicate follow
    (1, "python", "2017-07-01 10:00:00"),  # followed again later: kept, counts once
    (3, "aws", "2017-06-01 10:00:00"),  # customer 3 only appears here
    (1, "", "2017-06-01 10:00:00"),  # empty tag
    (1, "go", "2017-06-01"),  # date without time
]
ASSESSMENTS = [
    (2, "python", "2017-06-01 10:00:00", 150),
    (2, "python", "2017-06-02 10:00:00", 250),  # second attempt: best score counts
    (2, "python", "2017-06-03 10:00:00", 301),  # out of range
    (2, "python", "2017-06-04 10:00:00", "x"),  # not a number
]


@pytest.fixture
def dirty(tmp_path: Path) -> Path:
    return write_dataset(
        tmp_path / "data", views=VIEWS, tags=TAGS, interests=INTERESTS, assessments=ASSESSMENTS
    )


def _rejects(tables: object, file: str) -> list[tuple[int, str]]:
    frame = tables.rejects.filter(pl.col("file") == file)  # type: ignore[attr-defined]
    return list(zip(frame["line"].to_list(), frame["reason"].to_list(), strict=True))


def test_every_dirty_view_row_is_counted_under_its_reason(dirty: Path) -> None:
    tables = read_tables(dirty)
    assert _rejects(tables, "user_course_views.csv") == [
        (4, "duplicate_row"),
        (5, "missing_user_handle"),
        (6, "bad_user_handle"),
        (7, "bad_user_handle"),
        (8, "bad_date"),
        (9, "unknown_course"),
        (10, "negative_view_time"),
        (11, "bad_view_time"),
        (12, "view_time_over_a_day"),
        (14, "missing_course_id"),
    ]
    views = tables.views.sort("user_handle", "view_time_seconds")
    assert views.select("user_handle", "course_id", "view_time_seconds").rows() == [
        (1, "c1", 50.0),
        (1, "c1", 100.0),
        (2, "c2", 12.5),
        (2, "c3", 200.0),
    ]


def test_counts_add_up_to_rows_read(dirty: Path) -> None:
    tables = read_tables(dirty)
    by_name = {f.name: f for f in tables.files}
    expected_read = {
        "user_course_views.csv": len(VIEWS),
        "course_tags.csv": len(TAGS),
        "user_interests.csv": len(INTERESTS),
        "user_assessment_scores.csv": len(ASSESSMENTS),
    }
    for name, rows in expected_read.items():
        report = by_name[name]
        assert report.rows_read == rows
        assert report.rows_accepted + sum(report.rejected.values()) == rows
        assert sum(report.rejected.values()) == tables.rejects.filter(pl.col("file") == name).height


def test_course_tags_empty_and_duplicate(dirty: Path) -> None:
    tables = read_tables(dirty)
    assert _rejects(tables, "course_tags.csv") == [
        (3, "duplicate_row"),
        (4, "empty_tag"),
        (7, "missing_course_id"),
    ]
    assert tables.courses["course_id"].to_list() == ["c1", "c2", "c3"]
    assert tables.course_tags.rows() == [("c1", "python"), ("c3", "aws"), ("c3", "cloud")]


def test_interests_and_assessments(dirty: Path) -> None:
    tables = read_tables(dirty)
    assert _rejects(tables, "user_interests.csv") == [
        (3, "duplicate_row"),
        (6, "empty_tag"),
        (7, "bad_date"),
    ]
    assert tables.interests.height == 3
    assert _rejects(tables, "user_assessment_scores.csv") == [
        (4, "score_out_of_range"),
        (5, "bad_score"),
    ]
    assert tables.assessments["score"].to_list() == [150, 250]


def test_reject_rows_carry_field_and_value(dirty: Path) -> None:
    tables = read_tables(dirty)
    row = tables.rejects.filter(
        (pl.col("file") == "user_course_views.csv") & (pl.col("line") == 11)
    )
    assert row.select("reason", "field", "value").rows() == [
        ("bad_view_time", "view_time_seconds", "abc")
    ]
    dup = tables.rejects.filter((pl.col("file") == "user_course_views.csv") & (pl.col("line") == 4))
    assert dup["value"].to_list() == ["1,2017-06-01,c1,100.0"]


def test_optional_files_may_be_absent(tmp_path: Path) -> None:
    data = write_dataset(tmp_path, views=VIEWS[:1], tags=TAGS[:1])
    tables = read_tables(data)
    assert tables.interests.height == 0
    assert tables.assessments.height == 0
    present = {f.name: f.present for f in tables.files}
    assert present == {
        "user_course_views.csv": True,
        "course_tags.csv": True,
        "user_interests.csv": False,
        "user_assessment_scores.csv": False,
    }


@pytest.mark.parametrize("missing", ["user_course_views.csv", "course_tags.csv"])
def test_missing_required_file_names_it(tmp_path: Path, missing: str) -> None:
    data = write_dataset(tmp_path, views=VIEWS[:1], tags=TAGS[:1])
    (data / missing).unlink()
    with pytest.raises(InputError) as err:
        read_tables(data)
    assert str(err.value) == f"{data / missing}: required file is missing"


@pytest.mark.parametrize(
    ("file", "header", "missing"),
    [
        (
            "user_course_views.csv",
            ("user_handle", "view_date", "course_id", "level"),
            "view_time_seconds",
        ),
        ("course_tags.csv", ("course_id", "tags"), "course_tags"),
        ("user_interests.csv", ("user_handle", "interest_tag"), "date_followed"),
        (
            "user_assessment_scores.csv",
            ("user_handle", "assessment_tag", "user_assessment_date"),
            "user_assessment_score",
        ),
    ],
)
def test_missing_column_names_file_and_column(
    tmp_path: Path, file: str, header: tuple[str, ...], missing: str
) -> None:
    data = write_dataset(tmp_path, views=VIEWS[:1], tags=TAGS[:1], interests=[], assessments=[])
    write_csv(data / file, header, [])
    with pytest.raises(InputError) as err:
        read_tables(data)
    assert str(err.value) == (
        f"{data / file}: missing column {missing!r} (header has: {', '.join(header)})"
    )


def test_empty_file_is_an_error_naming_it(tmp_path: Path) -> None:
    data = write_dataset(tmp_path, views=VIEWS[:1], tags=TAGS[:1])
    (data / "course_tags.csv").write_bytes(b"")
    with pytest.raises(InputError, match=r"course_tags\.csv: file is empty"):
        read_tables(data)


def test_bom_crlf_and_quoted_commas(tmp_path: Path) -> None:
    data = tmp_path
    (data / "course_tags.csv").write_bytes(
        b'\xef\xbb\xbf"course_id","course_tags"\r\n"c,1","c#"\r\n"c2","r\xc3\xa9seau"\r\n'
    )
    (data / "user_course_views.csv").write_bytes(
        b'"user_handle","view_date","course_id","author_handle","level","view_time_seconds"\r\n'
        b'1,"2017-06-01","c,1",1,"Beginner",60\r\n2,"2017-06-01","c2",1,"Beginner",30\r\n'
    )
    tables = read_tables(data)
    assert tables.rejects.height == 0
    assert tables.course_tags.rows() == [("c,1", "c#"), ("c2", "réseau")]
    assert tables.views["course_id"].to_list() == ["c,1", "c2"]


def test_bytes_that_are_not_utf8_are_rejected_rows(tmp_path: Path) -> None:
    data = write_dataset(
        tmp_path, views=[(1, "2017-06-01", "c1", 1, "Beginner", 5)], tags=[("c1", "a")]
    )
    with (data / "course_tags.csv").open("ab") as fh:
        fh.write(b'"c2","caf\xe9"\n')
    tables = read_tables(data)
    assert tables.rejects.select("file", "line", "reason").rows() == [
        ("course_tags.csv", 3, "invalid_utf8")
    ]
