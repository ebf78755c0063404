"""Evaluation: the split, the metrics and the baselines give the hand-computed answers."""

from __future__ import annotations

import datetime as dt
import importlib.util
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from similarity_api.build.features import build_features
from similarity_api.build.ingest import Tables, read_tables
from similarity_api.evaluate import (
    Holdout,
    Variant,
    catalogue,
    community_precision,
    leave_latest_out,
    main,
    nearest,
    recommend_from_neighbours,
    recommend_popular,
    score_recommendations,
    universe,
    variant_matrix,
)
from similarity_api.settings import BlockWeights
from similarity_api.synth import SynthConfig, generate
from tests.conftest import write_dataset

COURSES = [f"c{i:02d}" for i in range(1, 11)]


def _day(d: int) -> str:
    return (dt.date(2017, 6, 1) + dt.timedelta(days=d - 1)).isoformat()


def _view(user: int, day: int, course: str, seconds: int = 100) -> tuple[object, ...]:
    return (user, _day(day), course, 1, "Beginner", seconds)


VIEWS = [
    # customer 1: five courses, one a day; c05 (day 5) is the latest -> held out, cutoff day 5
    *(_view(1, d, c) for d, c in enumerate(COURSES[:5], start=1)),
    _view(1, 6, "c01", 50),  # a re-view after the cutoff: not training data either
    # customer 2: ten courses; c10 and c09 both start on day 9 -> ties go by course id, and the
    # last two (c09, c10) are held out; the re-view of c01 on the cutoff day stays
    *(_view(2, d, c) for d, c in enumerate(COURSES[:8], start=1)),
    _view(2, 9, "c10"),
    _view(2, 9, "c09"),
    _view(2, 9, "c01", 70),
    # customer 3: four courses, below the minimum of five: never evaluated, keeps everything
    *(_view(3, 30, c) for c in ("c01", "c02", "c03", "c05")),
]
TAGS = [(c, "python" if int(c[1:]) % 2 else "aws") for c in COURSES]
INTERESTS = [
    (1, "python", "2017-06-01 10:00:00"),
    (1, "go", "2017-06-05 23:59:00"),  # on the cutoff day: kept
    (1, "sql", "2017-06-06 00:00:00"),  # after the cutoff day: dropped
    (3, "sql", "2017-07-30 00:00:00"),  # not evaluated: kept whatever the date
    (4, "go", "2017-06-01 00:00:00"),  # customer 4 only follows a tag
]
ASSESSMENTS = [(1, "python", "2017-06-10 00:00:00", 200)]  # after customer 1's cutoff


@pytest.fixture
def tables(tmp_path: Path) -> Tables:
    data = write_dataset(
        tmp_path / "data", views=VIEWS, tags=TAGS, interests=INTERESTS, assessments=ASSESSMENTS
    )
    return read_tables(data)


@pytest.fixture
def holdout(tables: Tables) -> Holdout:
    return leave_latest_out(tables)


def _pairs(frame: pl.DataFrame) -> list[tuple[int, str]]:
    return [(int(u), str(c)) for u, c in frame.select("user_handle", "course_id").iter_rows()]


def test_leave_latest_out_holds_out_the_latest_courses(holdout: Holdout) -> None:
    assert holdout.users.tolist() == [1, 2]
    assert _pairs(holdout.held_out) == [(1, "c05"), (2, "c09"), (2, "c10")]
    assert holdout.cutoff.rows() == [(1, dt.date(2017, 6, 5)), (2, dt.date(2017, 6, 9))]


def test_training_split_keeps_only_what_was_known_at_the_cutoff(holdout: Holdout) -> None:
    train = holdout.train
    views = train.views.sort("user_handle", "view_date", "course_id")
    kept = [
        (u, c, d.isoformat(), s)
        for u, d, c, s in views.select(
            "user_handle", "view_date", "course_id", "view_time_seconds"
        ).iter_rows()
    ]
    expected = [(1, c, _day(d), 100.0) for d, c in enumerate(COURSES[:4], start=1)]
    expected += [(2, c, _day(d), 100.0) for d, c in enumerate(COURSES[:8], start=1)]
    expected += [(2, "c01", _day(9), 70.0)]
    expected += [(3, c, _day(30), 100.0) for c in ("c01", "c02", "c03", "c05")]
    assert kept == expected
    interests = train.interests.sort("user_handle", "tag").select("user_handle", "tag").rows()
    assert interests == [(1, "go"), (1, "python"), (3, "sql"), (4, "go")]
    assert train.assessments.height == 0


def test_recall_and_hit_rate_of_hand_made_recommendations(holdout: Holdout) -> None:
    cat = catalogue(holdout.train, universe(holdout.train))
    col = {c: i for i, c in enumerate(cat.courses.tolist())}

    def recs(*lists: list[str]) -> list[np.ndarray]:
        return [np.array([col[c] for c in courses], dtype=np.int64) for courses in lists]

    # customer 1 finds its one held-out course (1/1), customer 2 one of its two (1/2)
    both = score_recommendations(cat, holdout, recs(["c05", "c06"], ["c03", "c09"]))
    assert (both.recall, both.hit_rate, both.customers) == (0.75, 1.0, 2)
    # customer 2 finds nothing: recall (1 + 0) / 2, one customer of two hit
    one = score_recommendations(cat, holdout, recs(["c06", "c05"], ["c03"]))
    assert (one.recall, one.hit_rate) == (0.5, 0.5)


def test_most_popular_baseline_recommends_unseen_courses_by_training_viewers(
    holdout: Holdout,
) -> None:
    cat = catalogue(holdout.train, universe(holdout.train))
    assert cat.users.tolist() == [1, 2, 3, 4]
    # training viewers: c01-c03 three each, c04 and c05 two (c05 is customer 1's held-out
    # course, but customers 2 and 3 viewed it), c06-c08 one each, c09/c10 none (held out)
    assert cat.popularity.tolist() == [3, 3, 3, 2, 2, 1, 1, 1, 0, 0]
    got = recommend_popular(cat, np.array([0, 1]), 20)
    # customer 2 already viewed every course anyone viewed in training: nothing left to offer
    assert [cat.courses[r].tolist() for r in got] == [["c05", "c06", "c07", "c08"], []]
    assert [cat.courses[r].tolist() for r in recommend_popular(cat, np.array([0]), 2)] == [
        ["c05", "c06"]
    ]


def test_neighbours_vote_with_their_similarity(holdout: Holdout) -> None:
    cat = catalogue(holdout.train, universe(holdout.train))
    # customer 1 (row 0): customer 3 (row 2) at 0.9 votes c05; customer 2 (row 1) at 0.5 votes
    # c05-c08; c01-c04 are customer 1's own. c05 = 1.4 first, then c06..c08 tied at 0.5 by id.
    ids = np.array([[2, 1], [2, 0]])
    sims = np.array([[0.9, 0.5], [-0.2, 0.0]])  # customer 2's neighbours do not vote
    got = recommend_from_neighbours(cat, np.array([0, 1]), ids, sims, 3)
    assert [cat.courses[r].tolist() for r in got] == [["c05", "c06", "c07"], []]


def test_nearest_is_exact_cosine_without_self_or_empty_rows() -> None:
    vectors = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.0, 0.0], [0.6, 0.8]])
    ids, sims = nearest(vectors, np.array([0, 3]), 4)
    assert ids.tolist() == [[1, 4, 2, -1], [-1, -1, -1, -1]]
    np.testing.assert_allclose(sims[0, :3], [0.8, 0.6, 0.0])
    assert np.isneginf(sims[1]).all()


def test_community_precision_counts_unplaced_customers_as_misses() -> None:
    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.0, 0.0]])
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    label = np.array([0, 0, 1, 1, 1])
    rows = np.arange(5)
    precision, coverage = community_precision(vectors, rows, label, 1)
    # rows 0-3: their one nearest neighbour is in their community; row 4 cannot be placed
    assert (precision, coverage) == (0.8, 0.8)


def test_default_variant_is_exactly_the_shipped_feature_matrix(tables: Tables) -> None:
    features = build_features(tables, BlockWeights())
    matrix, idf = variant_matrix(tables, universe(tables), Variant("shipped"))
    assert features.users.tolist() == universe(tables).tolist()
    np.testing.assert_allclose(matrix.toarray(), features.matrix.toarray(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(idf.astype(np.float32), features.space.idf)


def test_command_prints_the_table_on_real_and_generated_layouts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generated = tmp_path / "generated"
    generate(SynthConfig(n_users=300, seed=7), generated)
    out_dir = tmp_path / "out"
    code = main(
        [
            "--data-dir",
            str(generated),
            "--generated-dir",
            str(generated),
            "--out-dir",
            str(out_dir),
            "--log-level",
            "warning",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    for method in ("default", "popular", "original", "cosine-course", "cosine-tag"):
        assert printed.count(f"| {method}") == 2
    assert "community precision@10" in printed
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out_dir / "quality.png").stat().st_size > 0
    else:
        assert "matplotlib missing" in printed


def test_command_refuses_a_generated_dir_without_communities(
    tables: Tables, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--data-dir", str(tmp_path / "data"), "--generated-dir", str(tmp_path / "data")])
    assert code == 2
    assert "communities.csv" in capsys.readouterr().err
