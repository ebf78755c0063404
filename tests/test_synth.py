"""Tests of the synthetic data generator (small N, a few seconds in all)."""

from __future__ import annotations

import csv
import hashlib
import itertools
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from similarity_api.synth import FILES, SynthConfig, SynthReport, cli, generate

REAL_HEADERS = {
    "user_course_views.csv": (
        '"user_handle","view_date","course_id","author_handle","level","view_time_seconds"'
    ),
    "course_tags.csv": '"course_id","course_tags"',
    "user_interests.csv": '"user_handle","interest_tag","date_followed"',
    "user_assessment_scores.csv": (
        '"user_handle","assessment_tag","user_assessment_date","user_assessment_score"'
    ),
    "communities.csv": '"user_handle","community"',
}

LINE_PATTERNS = {
    "user_course_views.csv": re.compile(
        r'[1-9]\d*,"2017-\d\d-\d\d","[a-z0-9+#.-]+",[1-9]\d*,'
        r'"(Beginner|Intermediate|Advanced)",[1-9]\d*'
    ),
    "course_tags.csv": re.compile(r'"[a-z0-9+#.-]+","[a-z0-9+#.-]*"'),
    "user_interests.csv": re.compile(r'[1-9]\d*,"[a-z0-9+#.-]+","2017-\d\d-\d\d \d\d:\d\d:\d\d"'),
    "user_assessment_scores.csv": re.compile(
        r'[1-9]\d*,"[a-z0-9+#.-]+","201[67]-\d\d-\d\d \d\d:\d\d:\d\d",(0|[1-9]\d*)'
    ),
    "communities.csv": re.compile(r"[1-9]\d*,(0|[1-9]\d*)"),
}


def _sha256(directory: Path) -> dict[str, str]:
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in FILES}


def _rows(directory: Path, name: str) -> list[list[str]]:
    with (directory / name).open(newline="", encoding="ascii") as fh:
        return list(csv.reader(fh))[1:]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthReport]:
    out = tmp_path_factory.mktemp("synth2000")
    return out, generate(SynthConfig(n_users=2000, seed=7), out)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean")
    assert cli(["--users", "1000", "--seed", "3", "--out", str(out), "--clean"]) == 0
    return out


def test_same_inputs_give_byte_identical_files(tmp_path: Path) -> None:
    config = SynthConfig(n_users=500, seed=11)
    generate(config, tmp_path / "a")
    generate(config, tmp_path / "b")
    assert _sha256(tmp_path / "a") == _sha256(tmp_path / "b")
    generate(SynthConfig(n_users=500, seed=12), tmp_path / "c")
    assert (
        _sha256(tmp_path / "c")["user_course_views.csv"]
        != _sha256(tmp_path / "a")["user_course_views.csv"]
    )


def test_chunk_size_does_not_change_output(tmp_path: Path) -> None:
    for chunk in (100, 1000, 150):
        generate(SynthConfig(n_users=1500, seed=5, chunk_size=chunk), tmp_path / str(chunk))
    assert _sha256(tmp_path / "100") == _sha256(tmp_path / "1000") == _sha256(tmp_path / "150")


def test_headers_and_csv_style_match_the_originals(dataset: tuple[Path, SynthReport]) -> None:
    out, report = dataset
    for name in FILES:
        raw = (out / name).read_bytes()
        assert not raw.startswith(b"\xef\xbb\xbf")
        assert b"\r" not in raw
        assert raw.endswith(b"\n")
        lines = raw.decode("ascii").split("\n")[:-1]
        assert lines[0] == REAL_HEADERS[name]
        assert len(lines) - 1 == report.rows[name]
        bad = [line for line in lines[1:] if not LINE_PATTERNS[name].fullmatch(line)]
        assert bad == [], f"{name}: {bad[:3]}"


def test_views_have_realistic_shape(dataset: tuple[Path, SynthReport]) -> None:
    out, _ = dataset
    views = _rows(out, "user_course_views.csv")
    courses_per_user: dict[str, set[str]] = defaultdict(set)
    rows_per_pair = Counter((r[0], r[2]) for r in views)
    for r in views:
        courses_per_user[r[0]].add(r[2])
    distinct = [len(c) for c in courses_per_user.values()]
    assert 3 <= statistics.median(distinct) <= 7
    assert 8 <= statistics.mean(distinct) <= 16
    assert abs(len(courses_per_user) / 2000 - 0.876) < 0.05
    assert 2.0 <= statistics.mean(rows_per_pair.values()) <= 2.8
    assert min(r[1] for r in views) >= "2017-05-01"
    assert max(r[1] for r in views) <= "2017-11-28"
    seconds = [int(r[5]) for r in views]
    assert 1500 <= statistics.mean(seconds) <= 2100
    assert max(seconds) <= 40_000
    levels = Counter(r[4] for r in views)
    assert levels["Beginner"] > levels["Advanced"] < levels["Intermediate"]


def test_interests_and_assessments_have_realistic_shape(
    dataset: tuple[Path, SynthReport],
) -> None:
    out, _ = dataset
    interests = Counter(r[0] for r in _rows(out, "user_interests.csv"))
    assert len(interests) == 2000
    assert 9 <= statistics.median(interests.values()) <= 18
    scores = _rows(out, "user_assessment_scores.csv")
    assessed = {r[0] for r in scores}
    assert 0.25 <= len(assessed) / 2000 <= 0.37
    assert 1.6 <= len(scores) / len(assessed) <= 2.6
    values = [int(r[3]) for r in scores]
    assert min(values) >= 0
    assert max(values) <= 300
    assert 125 <= statistics.mean(values) <= 160
    assert len({r[1] for r in scores}) <= 54


def test_interest_duplicate_rate_is_close_to_configured(
    dataset: tuple[Path, SynthReport],
) -> None:
    out, report = dataset
    lines = (out / "user_interests.csv").read_text().splitlines()[1:]
    duplicates = len(lines) - len(set(lines))
    assert duplicates == report.dirty["duplicate_interest_rows"]
    assert abs(duplicates / len(lines) - 0.06) < 0.015


def test_planted_view_dirt_is_reported(tmp_path: Path) -> None:
    config = SynthConfig(n_users=1000, seed=9, unknown_course_rate=0.01, view_duplicate_rate=0.01)
    report = generate(config, tmp_path)
    known = {r[0] for r in _rows(tmp_path, "course_tags.csv")}
    lines = (tmp_path / "user_course_views.csv").read_text().splitlines()[1:]
    unknown = [line for line in lines if line.split(",")[2].strip('"') not in known]
    assert len(unknown) == report.dirty["unknown_course_view_rows"] > 0
    assert len(lines) - len(set(lines)) == report.dirty["duplicate_view_rows"] > 0
    # The planted course ids look like real ones.
    assert all(re.fullmatch(r'"[a-z0-9+#.-]+-\d+"', u.split(",")[2]) for u in unknown)


def test_every_viewed_course_is_tagged_apart_from_planted_rows(
    dataset: tuple[Path, SynthReport],
) -> None:
    out, report = dataset
    tags = _rows(out, "course_tags.csv")
    known = {r[0] for r in tags}
    views = _rows(out, "user_course_views.csv")
    unknown = sum(r[2] not in known for r in views)
    assert unknown == report.dirty["unknown_course_view_rows"]
    assert unknown <= 0.002 * len(views)
    tags_per_course = Counter(r[0] for r in tags)
    assert 1 <= max(tags_per_course.values()) <= 15
    assert 1.5 <= statistics.mean(tags_per_course.values()) <= 2.4
    empty = [r[0] for r in tags if r[1] == ""]
    assert len(empty) == report.dirty["empty_tag_courses"]
    assert all(tags_per_course[c] == 1 for c in empty)
    assert 0.005 <= len(empty) / len(tags_per_course) <= 0.04


def test_clean_flag_writes_no_dirty_rows(clean: Path) -> None:
    for name in ("user_course_views.csv", "user_interests.csv", "user_assessment_scores.csv"):
        lines = (clean / name).read_text().splitlines()[1:]
        assert len(lines) == len(set(lines)), name
    tags = _rows(clean, "course_tags.csv")
    assert all(tag != "" for _, tag in tags)
    known = {course for course, _ in tags}
    assert all(r[2] in known for r in _rows(clean, "user_course_views.csv"))


def test_clean_files_are_the_dirty_ones_minus_the_dirt(tmp_path: Path) -> None:
    dirty = generate(SynthConfig(n_users=800, seed=4), tmp_path / "dirty")
    generate(SynthConfig(n_users=800, seed=4, dirty=False), tmp_path / "clean")
    name = "user_interests.csv"
    dirty_lines = (tmp_path / "dirty" / name).read_text().splitlines()
    clean_lines = (tmp_path / "clean" / name).read_text().splitlines()
    assert list(dict.fromkeys(dirty_lines)) == clean_lines
    assert len(dirty_lines) - len(clean_lines) == dirty.dirty["duplicate_interest_rows"]


def test_communities_cover_every_user_once(dataset: tuple[Path, SynthReport]) -> None:
    out, report = dataset
    rows = _rows(out, "communities.csv")
    assert [int(r[0]) for r in rows] == list(range(1, 2001))
    communities = {int(r[1]) for r in rows}
    assert communities <= set(range(report.n_communities))
    assert len(communities) > report.n_communities // 2


def test_same_community_pairs_share_more_course_tags(dataset: tuple[Path, SynthReport]) -> None:
    out, _ = dataset
    course_tags: dict[str, set[str]] = defaultdict(set)
    for course, tag in _rows(out, "course_tags.csv"):
        if tag:
            course_tags[course].add(tag)
    user_tags: dict[str, set[str]] = defaultdict(set)
    for r in _rows(out, "user_course_views.csv"):
        user_tags[r[0]] |= course_tags.get(r[2], set())
    community = {r[0]: r[1] for r in _rows(out, "communities.csv")}
    users = sorted(user_tags, key=int)[:600]
    same: list[int] = []
    cross: list[int] = []
    for a, b in itertools.combinations(users, 2):
        shared = len(user_tags[a] & user_tags[b])
        (same if community[a] == community[b] else cross).append(shared)
    assert len(same) > 1000
    assert statistics.mean(same) > 2 * statistics.mean(cross)


def test_config_overrides_and_validation(tmp_path: Path) -> None:
    report = generate(SynthConfig(n_users=200, n_courses=300, n_communities=3), tmp_path)
    assert report.n_courses == 300
    assert report.n_communities == 3
    assert len({r[0] for r in _rows(tmp_path, "course_tags.csv")}) == 300
    assert {r[1] for r in _rows(tmp_path, "communities.csv")} <= {"0", "1", "2"}
    assert SynthConfig(n_users=10_000).courses() == pytest.approx(5_942, rel=0.05)
    assert SynthConfig(n_users=1_000_000).courses() == pytest.approx(50_000, rel=0.05)
    assert SynthConfig(n_users=1_000_000).communities() == 2_000
    with pytest.raises(ValueError, match="n_users"):
        SynthConfig(n_users=0)
    with pytest.raises(ValueError, match="interest_duplicate_rate"):
        SynthConfig(n_users=10, interest_duplicate_rate=0.9)


def test_cli_prints_a_summary_line_per_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["--users", "150", "--out", str(tmp_path), "--chunk-size", "100"]) == 0
    err = capsys.readouterr().err
    for name in FILES:
        assert re.search(rf"{re.escape(name)}: [\d,]+ rows \([\d.]+ s\)", err), err
