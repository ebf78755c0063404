"""Build: exact feature values, exact neighbours, repeatable artifacts, clear failures."""

from __future__ import annotations

import itertools
import json
import logging
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from similarity_api import artifact
from similarity_api.build.features import build_features
from similarity_api.build.ingest import read_tables
from similarity_api.build.pipeline import BuildResult, build, exact_top_k
from similarity_api.errors import ArtifactError, BuildError
from similarity_api.index import SimilarityIndex
from similarity_api.settings import BlockWeights, BuildSettings
from tests.conftest import build_settings, write_dataset

THREE = {
    "views": [
        (1, "2017-06-01", "c1", 1, "Beginner", 100),
        (1, "2017-06-02", "c3", 1, "Beginner", 300),
        (2, "2017-06-01", "c3", 1, "Beginner", 100),
    ],
    "tags": [("c1", "python"), ("c3", "aws"), ("c3", "cloud")],
    "interests": [
        (1, "python", "2017-06-01 00:00:00"),
        (2, "python", "2017-06-01 00:00:00"),
        (3, "aws", "2017-06-01 00:00:00"),
    ],
    "assessments": [(2, "python", "2017-06-01 00:00:00", 150)],
}


def _idf(n: int, df: int) -> float:
    """The smooth IDF, squared: (ln((1 + n) / (1 + df)) + 1)^2."""
    return (math.log((1 + n) / (1 + df)) + 1) ** 2


def _unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def test_feature_matrix_of_three_customers(tmp_path: Path) -> None:
    data = write_dataset(tmp_path, **THREE)
    w = BlockWeights(course=1.0, tag=0.5, interest=0.25, assessment=0.2)
    fm = build_features(read_tables(data), w)

    assert fm.users.tolist() == [1, 2, 3]
    assert fm.space.names == ("c1", "c3", "aws", "cloud", "python", "aws", "python", "python")
    assert [(b.name, b.start, b.stop) for b in fm.space.blocks] == [
        ("course", 0, 2),
        ("tag", 2, 5),
        ("interest", 5, 7),
        ("assessment", 7, 8),
    ]
    l100, l300 = math.log1p(100), math.log1p(300)
    expected = np.zeros((3, 8))
    # customer 1: courses c1 (idf n=2 df=1) and c3 (df=2); tags python 100 s, aws+cloud 300 s each
    expected[0, 0:2] = w.course * _unit([l100 * _idf(2, 1), l300 * _idf(2, 2)])
    expected[0, 2:5] = w.tag * _unit([l300 * _idf(2, 2), l300 * _idf(2, 2), l100 * _idf(2, 1)])
    expected[0, 6] = w.interest
    # customer 2: c3 only; aws+cloud 100 s each; interest python; assessment python 150/300
    expected[1, 1] = w.course
    expected[1, 2:4] = w.tag * _unit([l100, l100])
    expected[1, 6] = w.interest
    expected[1, 7] = w.assessment
    # customer 3: only follows aws
    expected[2, 5] = w.interest
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)

    np.testing.assert_allclose(fm.matrix.toarray(), expected, rtol=1e-6, atol=1e-7)
    s = fm.summaries
    assert s.courses_viewed.tolist() == [2, 1, 0]
    assert s.view_time_seconds.tolist() == [400.0, 100.0, 0.0]
    assert s.interests.tolist() == [1, 1, 1]
    assert s.assessments.tolist() == [0, 1, 0]
    top = [[fm.space.names[c] for c in row if c >= 0] for row in s.top_tags]
    assert top == [["aws", "cloud", "python"], ["aws", "cloud"], []]


def _community_data(tmp_path: Path) -> Path:
    """40 customers in 4 taste groups, deterministic."""
    rng = np.random.default_rng(3)
    courses = [f"course-{g}-{i}" for g in range(4) for i in range(6)]
    tags = [(c, f"topic-{c.split('-')[1]}") for c in courses] + [
        (c, "general") for c in courses[::5]
    ]
    views = []
    for user in range(1, 41):
        group = user % 4
        for course in rng.choice(6, size=3, replace=False):
            views.append(
                (
                    user,
                    "2017-06-01",
                    f"course-{group}-{course}",
                    1,
                    "Beginner",
                    int(rng.integers(60, 4000)),
                )
            )
        views.append((user, "2017-06-02", courses[int(rng.integers(0, 24))], 1, "Beginner", 100))
    interests = [(u, f"topic-{u % 4}", "2017-06-01 00:00:00") for u in range(1, 41)]
    return write_dataset(
        tmp_path / "data", views=views, tags=tags, interests=interests, assessments=[]
    )


def test_neighbours_equal_brute_force_on_tiny_artifact(tmp_path: Path) -> None:
    data = _community_data(tmp_path)
    result = build(build_settings(data, tmp_path / "art", dim=8))
    index = SimilarityIndex(artifact.load(result.path))
    emb = np.asarray(index.artifact.embeddings)
    handles = np.asarray(index.artifact.item_user)
    for item in range(emb.shape[0]):
        sims = emb @ emb[item]
        sims[item] = -np.inf
        order = np.lexsort((handles, -sims))[:10]
        got = index.similar_to_user(int(handles[item]), 10)
        assert [n.user_handle for n in got] == handles[order].tolist()
        np.testing.assert_allclose([n.similarity for n in got], sims[order], atol=1e-6)


def test_neighbours_match_brute_force_on_real_data(real_index: SimilarityIndex) -> None:
    emb = np.asarray(real_index.artifact.embeddings)
    handles = np.asarray(real_index.artifact.item_user)
    items = np.random.default_rng(0).choice(emb.shape[0], size=200, replace=False)
    exact = exact_top_k(emb, items, 10)
    hits = 0
    for row, item in enumerate(items):
        got = real_index.similar_to_user(int(handles[item]), 10)
        got_items = [
            int(real_index.artifact.user_item[real_index.row_of(n.user_handle)]) for n in got
        ]
        hits += len(set(got_items) & set(exact[row].tolist()))
        # every reported score is the exact cosine, and the order is exact
        np.testing.assert_allclose(
            [n.similarity for n in got], emb[got_items] @ emb[item], atol=1e-6
        )
        assert all(a.similarity >= b.similarity for a, b in itertools.pairwise(got))
        assert int(handles[item]) not in {n.user_handle for n in got}
    assert hits / (len(items) * 10) >= 0.97


def test_rebuild_is_byte_identical(
    tmp_path: Path, real_data_dir: Path, real_build: BuildResult
) -> None:
    again = build(build_settings(real_data_dir, tmp_path / "again"))
    first = real_build.manifest
    assert again.manifest.content_sha256 == first.content_sha256
    assert again.manifest.files == first.files
    assert again.manifest.self_test == first.self_test
    assert again.manifest.version != first.version  # a new version, same content


def test_manifest_records_what_the_issue_asks(real_build: BuildResult) -> None:
    m = real_build.manifest
    assert m.schema_version == artifact.SCHEMA_VERSION
    assert m.metric == "euclidean"
    assert m.dim == 64
    assert m.counts["customers"] == 10_000
    assert m.counts["customers_indexed"] + m.counts["customers_no_comparable_activity"] == 10_000
    assert m.inputs["user_interests.csv"]["rejected"] == {"duplicate_row": 18_209}
    assert m.inputs["user_course_views.csv"]["rows_read"] == 249_238
    assert m.inputs["course_tags.csv"]["rejected"]["empty_tag"] == 112
    assert set(m.timings) >= {"ingest", "features", "embeddings", "index", "quality", "total"}
    assert m.quality["recall_at_10_annoy"] >= m.quality["recall_at_10_annoy_low"] >= 0.95
    # search_k was tuned from n_trees * candidates; on 10,000 customers the start is enough
    assert [s.search_k for s in m.search_k_tuning] == [m.n_trees * m.candidates]
    assert m.search_k == m.search_k_tuning[-1].search_k
    assert m.threads["annoy_build_jobs"] == 1
    assert set(m.libraries) >= {"numpy", "scipy", "polars", "annoy", "python"}
    assert set(m.files) == set(artifact.FILES.values())
    rejects = (real_build.path / "rejects.csv").read_text().splitlines()
    assert rejects[0] == "file,line,reason,field,value"
    assert len(rejects) - 1 == m.counts["rows_rejected"] == 18_209 + 112 + 2


def test_dimension_is_clamped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = write_dataset(tmp_path, **THREE)
    with caplog.at_level(logging.WARNING):
        result = build(build_settings(data, tmp_path / "art", dim=64))
    assert result.manifest.dim == 2
    assert "embedding dimension clamped from 64 to 2" in caplog.text


def test_one_customer_cannot_be_indexed(tmp_path: Path) -> None:
    data = write_dataset(
        tmp_path, views=[(1, "2017-06-01", "c1", 1, "Beginner", 5)], tags=[("c1", "a")]
    )
    with pytest.raises(BuildError, match="at least 2 are needed"):
        build(build_settings(data, tmp_path / "art"))
    assert artifact.versions(tmp_path / "art") == []


def test_customers_whose_every_row_is_rejected_are_not_known(tmp_path: Path) -> None:
    views = [
        *THREE["views"],
        (9, "bad-date", "c1", 1, "Beginner", 5),
        (9, "2017-06-01", "nope", 1, "Beginner", 5),
    ]
    data = write_dataset(tmp_path, **{**THREE, "views": views})
    result = build(build_settings(data, tmp_path / "art"))
    loaded = artifact.load(result.path)
    assert loaded.users.tolist() == [1, 2, 3]
    assert result.rejected["user_course_views.csv"] == {"bad_date": 1, "unknown_course": 1}


def test_retention_keeps_newest_versions(tmp_path: Path) -> None:
    data = write_dataset(tmp_path, **THREE)
    paths = [
        build(build_settings(data, tmp_path / "art", keep_versions=2, dim=2)).path for _ in range(3)
    ]
    assert artifact.versions(tmp_path / "art") == [paths[1].name, paths[2].name]
    assert artifact.current_version(tmp_path / "art") == paths[2].name


def _published(tmp_path: Path) -> Path:
    data = write_dataset(tmp_path, **THREE)
    return build(build_settings(data, tmp_path / "art", dim=2)).path


def test_load_refuses_unknown_schema_version(tmp_path: Path) -> None:
    path = _published(tmp_path)
    doc = json.loads((path / "manifest.json").read_text())
    doc["schema_version"] = 99
    (path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(
        ArtifactError, match=r"schema_version 99 is not supported.*similarity_api build"
    ):
        artifact.load(path)


def test_load_refuses_a_modified_file(tmp_path: Path) -> None:
    path = _published(tmp_path)
    data = bytearray((path / "embeddings.npy").read_bytes())
    data[-1] ^= 0xFF
    (path / "embeddings.npy").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"embeddings\.npy checksum mismatch"):
        artifact.load(path)


def test_load_refuses_missing_manifest(tmp_path: Path) -> None:
    path = _published(tmp_path)
    (path / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match=r"manifest\.json is missing"):
        artifact.load(path)


def test_cli_reports_a_missing_file_in_one_line(tmp_path: Path) -> None:
    data = write_dataset(tmp_path, **THREE)
    (data / "course_tags.csv").unlink()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "similarity_api",
            "build",
            "--data-dir",
            str(data),
            "--artifacts-dir",
            str(tmp_path / "art"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr == f"error: {data / 'course_tags.csv'}: required file is missing\n"


def test_cli_builds_and_prints_stage_lines(tmp_path: Path) -> None:
    data = write_dataset(tmp_path, **THREE)
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/build_index.py",
            "--data-dir",
            str(data),
            "--artifacts-dir",
            str(tmp_path / "art"),
            "--dim",
            "2",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr
    stages = [line.split()[0] for line in proc.stderr.splitlines()]
    assert stages[:4] == ["ingest"] * 4
    assert {"features", "embeddings", "index", "published"} <= set(stages)
    assert artifact.current_version(tmp_path / "art") is not None


def test_help_states_each_default_the_build_uses() -> None:
    from similarity_api.build.cli import parser

    text = " ".join(parser().format_help().split())
    assert "(default: None)" not in text
    defaults = BuildSettings.model_fields
    for option, name in (
        ("--dim DIM", "dim"),
        ("--n-trees N_TREES", "n_trees"),
        ("--candidates CANDIDATES", "candidates"),
        ("--seed SEED", "seed"),
    ):
        assert f"{option} " in text
        segment = text.split(f"{option} ", 1)[1].split(" --", 1)[0]
        assert segment.endswith(f"[{defaults[name].default}]"), segment
    weight = BlockWeights.model_fields["tag"].default
    assert f"weight of the view time per course tag block [{weight}]" in text


def test_search_k_is_tuned_until_recall_reaches_the_target(
    real_data_dir: Path, tmp_path: Path
) -> None:
    """Too small a start: the build climbs a ladder (x sqrt(2) a rung) until Annoy's own recall@10
    on its sample reaches the target, bisects between the last miss and the first hit, records
    every step, and serves with the smallest search_k that met it. Each recorded recall is
    recomputed here from the stored embeddings (exact top 10) and the published index."""
    settings = build_settings(
        real_data_dir,
        tmp_path / "art",
        n_trees=2,
        candidates=10,
        target_recall=0.8,
        recall_sample=200,
    )
    result = build(settings)
    m = result.manifest
    steps = m.search_k_tuning
    low = {s.search_k: s.recall_at_10_annoy_low or 0.0 for s in steps}
    assert None not in [s.recall_at_10_annoy_low for s in steps]
    rungs = [s for s in steps if s.search_k in {round(20 * 2 ** (i / 2)) for i in range(11)}]
    assert [s.search_k for s in rungs] == [round(20 * 2 ** (i / 2)) for i in range(len(rungs))]
    assert len(rungs) >= 2
    assert all(low[s.search_k] < 0.8 for s in rungs[:-1])
    assert low[rungs[-1].search_k] >= 0.8
    # then two bisections, each between the nearest miss and hit so far
    bisected = steps[len(rungs) :]
    assert len(bisected) == 2
    miss, hit = rungs[-2].search_k, rungs[-1].search_k
    for step in bisected:
        assert step.search_k == round((miss * hit) ** 0.5)
        if low[step.search_k] >= 0.8:
            hit = step.search_k
        else:
            miss = step.search_k
    assert m.search_k == hit == min(k for k, value in low.items() if value >= 0.8)
    chosen = next(s for s in steps if s.search_k == m.search_k)
    assert m.quality["recall_at_10_annoy"] == chosen.recall_at_10_annoy
    assert m.quality["recall_at_10_annoy_low"] == chosen.recall_at_10_annoy_low
    assert m.parameters["search_k_requested"] == 0

    loaded = artifact.load(result.path)
    vectors = np.asarray(loaded.embeddings)
    n_items = vectors.shape[0]
    items = np.sort(np.random.default_rng(settings.seed).choice(n_items, 200, replace=False))
    # exact_top_k equals a full sort (test_exact_top_k_matches_argsort); on this data near-ties
    # make a second float32 product order the 10th and 11th neighbour differently.
    truth = [set(row.tolist()) for row in exact_top_k(vectors, items, 10)]
    for step in steps:
        per_customer = []
        for item, want in zip(items.tolist(), truth, strict=True):
            got = loaded.index.get_nns_by_item(item, 11, search_k=step.search_k)
            per_customer.append(len(want.intersection([i for i in got if i != item][:10])) / 10)
        mean = statistics.fmean(per_customer)
        # the lower end of the 95% confidence interval, by the textbook formula
        bound = mean - 1.96 * statistics.stdev(per_customer) / len(per_customer) ** 0.5
        assert mean == pytest.approx(step.recall_at_10_annoy, abs=1e-4)
        assert bound == pytest.approx(low[step.search_k], abs=1e-4)
        assert bound < mean
    loaded.index.unload()


def test_an_explicit_search_k_is_used_as_given(real_data_dir: Path, tmp_path: Path) -> None:
    settings = build_settings(
        real_data_dir, tmp_path / "art", n_trees=2, candidates=10, search_k=80, recall_sample=200
    )
    m = build(settings).manifest
    assert m.search_k == 80
    assert [s.search_k for s in m.search_k_tuning] == [80]
    assert m.quality["recall_at_10_annoy"] < settings.target_recall  # warned, not changed


def test_exact_top_k_matches_argsort() -> None:
    """The chunked brute force equals a plain full sort, across chunk boundaries, ties included
    (exact copies of a vector tie: the lower item comes first)."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((70_000, 8)).astype(np.float32)
    vectors[[69_999, 65_537, 12]] = vectors[5]  # copies on both sides of the 65,536 chunk edge
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = np.array([5, 12, 100, 65_536, 69_999])
    got = exact_top_k(vectors, items, 10)
    for row, item in enumerate(items):
        sims = vectors.astype(np.float64) @ vectors[item].astype(np.float64)
        sims[item] = -np.inf
        want = np.lexsort((np.arange(len(sims)), -sims))[:10]
        assert got[row].tolist() == want.tolist()
    assert got[0][:3].tolist() == [12, 65_537, 69_999]
