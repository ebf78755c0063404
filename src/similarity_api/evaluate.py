"""``python -m similarity_api evaluate``: is "similar" a number we can defend?

Three measurements, each against the obvious alternatives, in one run and one table.

1. **Index fidelity.** recall@k of the *served* neighbours (Annoy candidates, then the exact cosine
   re-rank of ``index.rank_candidates``, exactly as ``SimilarityIndex.similar_to_user`` does it)
   against exact cosine over every indexed customer (or a random ``--sample`` of them).
2. **Usefulness, leave-latest-out** (see :func:`leave_latest_out` for the exact protocol). Each
   method is built on the training split only. For an evaluated customer, its ``k`` nearest
   neighbours (exact cosine in the method's space) vote for the courses they viewed in training,
   each vote weighted by the neighbour's similarity; courses the customer already viewed in
   training are removed; the ``n`` best (ties: more training viewers first, then course id) are
   the recommendation. recall@n = held-out courses recommended / held-out courses, averaged over
   customers; hit-rate@n = share of customers with at least one held-out course recommended.
3. **Planted communities** (generated data only): precision@k = share of a customer's ``k``
   nearest neighbours (full data, exact cosine) from the customer's own community
   (``communities.csv``), averaged over every customer of the file; a customer a method cannot
   place counts 0, so coverage is part of the score.

Methods: the default build (``build_features`` with ``BlockWeights()`` and ``embed`` with
``BuildSettings.dim``, i.e. exactly what ``build`` serves), and the baselines

* ``popular``: the most-viewed training courses (no neighbours);
* ``original``: mean view seconds per course tag, rows demeaned, ``svds`` k=50, cosine kNN on
  ``U S`` (the approach this project replaces);
* ``cosine-course`` / ``cosine-tag``: cosine on raw view seconds per course / per course tag.

``--variants`` adds the tuning grid: feature variants built by :func:`variant_matrix`, a
parameterised re-statement of ``build.features`` (the ``default`` spec reproduces
``build_features`` exactly; a test checks it), so every row of the grid differs from the shipped
default only in what its name says.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, svds

from similarity_api import artifact as fmt
from similarity_api.build.embeddings import embed
from similarity_api.build.features import build_features
from similarity_api.build.ingest import Tables, read_tables
from similarity_api.build.pipeline import exact_top_k, recall_truth, tune_search_k
from similarity_api.errors import SimilarityError
from similarity_api.index import rank_candidates
from similarity_api.settings import BlockWeights, BuildSettings
from similarity_api.space import BLOCKS, LOG_BLOCKS

logger = logging.getLogger(__name__)

COMMUNITIES = "communities.csv"
HOLDOUT_FRACTION = 0.2
MIN_COURSES = 5
ORIGINAL_K = 50
COSINE_COURSE = "cosine-course (raw view seconds)"
_CHUNK = 1024

Matrix: TypeAlias = "np.ndarray | sp.csr_matrix"


# --- the leave-latest-out split ------------------------------------------------------------------


@dataclass(frozen=True)
class Holdout:
    """Training tables plus, per evaluated customer, the courses to find again."""

    train: Tables
    users: np.ndarray  # int64, sorted: the evaluated customers
    held_out: pl.DataFrame  # user_handle i64, course_id str: one row per held-out course
    cutoff: pl.DataFrame  # user_handle i64, cutoff date: first view of the first held-out course


def leave_latest_out(
    tables: Tables, *, fraction: float = HOLDOUT_FRACTION, min_courses: int = MIN_COURSES
) -> Holdout:
    """Hold out each eligible customer's latest courses.

    Protocol (the one the benchmark table reports):

    * a customer is evaluated when they viewed at least ``min_courses`` distinct courses;
    * their distinct courses are ordered by first view date (ties: course id); the last
      ``max(1, floor(fraction * n))`` are held out;
    * the cutoff is the first view date of the first held-out course. The training split keeps
      the customer's rows of the other courses dated on or before the cutoff (later re-views of
      an earlier course are dropped too), and their interests and assessments dated on or before
      the cutoff day;
    * every other customer keeps everything: they are the neighbours' history.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError("fraction must be in (0, 1)")
    firsts = (
        tables.views.group_by("user_handle", "course_id")
        .agg(pl.col("view_date").min().alias("first"))
        .sort("user_handle", "first", "course_id")
        .with_columns(
            pl.int_range(pl.len()).over("user_handle").alias("rank"),
            pl.len().over("user_handle").alias("n"),
        )
        .filter(pl.col("n") >= min_courses)
    )
    n_hold = pl.max_horizontal(
        pl.lit(1), (pl.col("n").cast(pl.Float64) * fraction + 1e-9).floor().cast(pl.Int64)
    )
    held = firsts.filter(pl.col("rank") >= pl.col("n") - n_hold)
    cutoff = held.group_by("user_handle").agg(pl.col("first").min().alias("cutoff"))
    held_out = held.select("user_handle", "course_id").sort("user_handle", "course_id")

    views = (
        tables.views.join(cutoff, on="user_handle", how="left")
        .join(
            held_out.with_columns(pl.lit(True).alias("_held")),
            on=["user_handle", "course_id"],
            how="left",
        )
        .filter(
            pl.col("cutoff").is_null()
            | (pl.col("_held").is_null() & (pl.col("view_date") <= pl.col("cutoff")))
        )
        .select(tables.views.columns)
    )

    def before(frame: pl.DataFrame, column: str) -> pl.DataFrame:
        day_after = pl.col("cutoff").cast(pl.Datetime("us")) + pl.duration(days=1)
        return (
            frame.join(cutoff, on="user_handle", how="left")
            .filter(pl.col("cutoff").is_null() | (pl.col(column) < day_after))
            .select(frame.columns)
        )

    train = dataclasses.replace(
        tables,
        views=views,
        interests=before(tables.interests, "date_followed"),
        assessments=before(tables.assessments, "date"),
    )
    users = cutoff.get_column("user_handle").sort().to_numpy().astype(np.int64)
    logger.info(
        "holdout %s customers evaluated (>= %d courses), %s courses held out, %s of %s view rows "
        "kept for training",
        f"{users.shape[0]:,}",
        min_courses,
        f"{held_out.height:,}",
        f"{views.height:,}",
        f"{tables.views.height:,}",
    )
    return Holdout(train=train, users=users, held_out=held_out, cutoff=cutoff.sort("user_handle"))


# --- spaces and exact neighbours -----------------------------------------------------------------


def universe(tables: Tables) -> np.ndarray:
    """Every customer with an accepted row, sorted: the rows of every method's space."""
    frames = [t.select("user_handle") for t in (tables.views, tables.interests, tables.assessments)]
    return pl.concat(frames).unique().sort("user_handle").get_column("user_handle").to_numpy()


def _place(users: np.ndarray, rows_users: np.ndarray, values: Matrix) -> Matrix:
    """Rows of ``values`` (customers ``rows_users``) at their positions in ``users``."""
    pos = np.searchsorted(users, rows_users)
    if isinstance(values, np.ndarray):
        out = np.zeros((users.shape[0], values.shape[1]), dtype=values.dtype)
        out[pos] = values
        return out
    coo = values.tocoo()
    return sp.csr_matrix(
        (coo.data, (pos[coo.row], coo.col)), shape=(users.shape[0], values.shape[1])
    )


def normalise_rows(values: Matrix) -> Matrix:
    """L2-normalise rows (zero rows stay zero)."""
    if isinstance(values, np.ndarray):
        norms = np.linalg.norm(values, axis=1)
        norms[norms == 0] = 1.0
        return values / norms[:, None]
    csr = sp.csr_matrix(values, dtype=np.float64)
    norms = np.sqrt(np.asarray(csr.multiply(csr).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / norms) @ csr)


def _row_norms(values: Matrix) -> np.ndarray:
    if isinstance(values, np.ndarray):
        norms: np.ndarray = np.linalg.norm(values, axis=1)
        return norms
    squares = np.asarray(values.multiply(values).sum(axis=1), dtype=np.float64).ravel()
    return np.sqrt(squares)


def nearest(vectors: Matrix, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-``k`` of each query row (itself and empty rows excluded).

    ``vectors`` rows must be L2-normalised or zero. Returns (ids int64, sims float64), both
    (len(queries), k), best first, ties by row (= customer handle) order; ``-1`` / ``-inf`` where
    fewer than ``k`` customers can be compared (or the query itself is empty).
    """
    n = vectors.shape[0]
    valid = _row_norms(vectors) > 1e-9
    ids = np.full((queries.shape[0], k), -1, dtype=np.int64)
    sims = np.full((queries.shape[0], k), -np.inf, dtype=np.float64)
    if n < 2:
        return ids, sims
    kk = min(k, n - 1)
    transposed = vectors.T
    for start in range(0, queries.shape[0], _CHUNK):
        q = queries[start : start + _CHUNK]
        block = vectors[q] @ transposed
        scores = np.asarray(block.toarray() if sp.issparse(block) else block, dtype=np.float64)
        scores[:, ~valid] = -np.inf
        scores[np.arange(q.shape[0]), q] = -np.inf
        top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        top.sort(axis=1)
        top_sims = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        top_sims = np.take_along_axis(top_sims, order, axis=1)
        top[~np.isfinite(top_sims)] = -1
        top[~valid[q]] = -1
        top_sims[~valid[q]] = -np.inf
        ids[start : start + q.shape[0], :kk] = top
        sims[start : start + q.shape[0], :kk] = top_sims
    return ids, sims


# --- recommendations and their scores ------------------------------------------------------------


@dataclass(frozen=True)
class Catalogue:
    """Training view history as a binary customer x course matrix, plus course popularity."""

    users: np.ndarray  # int64, sorted (the universe)
    courses: np.ndarray  # str: course ids, sorted
    seen: sp.csr_matrix  # float64 0/1 (users x courses)
    popularity: np.ndarray  # int64: distinct training viewers per course


def catalogue(tables: Tables, users: np.ndarray) -> Catalogue:
    courses = tables.courses.get_column("course_id").sort().to_numpy()
    pairs = tables.views.select("user_handle", "course_id").unique()
    rows = np.searchsorted(users, pairs.get_column("user_handle").to_numpy())
    cols = np.searchsorted(courses, pairs.get_column("course_id").to_numpy())
    seen = sp.csr_matrix(
        (np.ones(rows.shape[0]), (rows, cols)), shape=(users.shape[0], courses.shape[0])
    )
    seen.sum_duplicates()
    popularity = np.asarray(seen.sum(axis=0)).ravel().astype(np.int64)
    return Catalogue(users=users, courses=courses, seen=seen, popularity=popularity)


def recommend_from_neighbours(
    cat: Catalogue, queries: np.ndarray, ids: np.ndarray, sims: np.ndarray, n: int
) -> list[np.ndarray]:
    """Similarity-weighted votes of the neighbours' training courses, minus the customer's own.

    Returns one int64 array of course columns per query (at most ``n``, best first; ties: more
    training viewers, then course id). Neighbours with similarity <= 0 do not vote.
    """
    m, k = ids.shape
    weight = np.where((ids >= 0) & np.isfinite(sims), np.maximum(sims, 0.0), 0.0)
    rows = np.repeat(np.arange(m), k)
    mask = weight.ravel() > 0
    w = sp.csr_matrix(
        (weight.ravel()[mask], (rows[mask], ids.ravel()[mask])), shape=(m, cat.seen.shape[0])
    )
    scores = sp.csr_matrix(w @ cat.seen)
    own = cat.seen[queries]
    out: list[np.ndarray] = []
    for i in range(m):
        lo, hi = scores.indptr[i], scores.indptr[i + 1]
        cols, vals = scores.indices[lo:hi], scores.data[lo:hi]
        mine = own.indices[own.indptr[i] : own.indptr[i + 1]]
        keep = (vals > 0) & ~np.isin(cols, mine)
        cols, vals = cols[keep], vals[keep]
        order = np.lexsort((cols, -cat.popularity[cols], -vals))[:n]
        out.append(cols[order].astype(np.int64))
    return out


def recommend_popular(cat: Catalogue, queries: np.ndarray, n: int) -> list[np.ndarray]:
    """The ``n`` courses with the most training viewers that the customer has not viewed."""
    ranked = np.lexsort((np.arange(cat.courses.shape[0]), -cat.popularity))
    ranked = ranked[cat.popularity[ranked] > 0]
    own = cat.seen[queries]
    out: list[np.ndarray] = []
    head = ranked[: n + int(np.diff(own.indptr).max(initial=0))]
    for i in range(queries.shape[0]):
        mine = own.indices[own.indptr[i] : own.indptr[i + 1]]
        out.append(head[~np.isin(head, mine)][:n].astype(np.int64))
    return out


@dataclass(frozen=True)
class Usefulness:
    recall: float
    hit_rate: float
    customers: int


def score_recommendations(
    cat: Catalogue, holdout: Holdout, recommendations: Sequence[np.ndarray]
) -> Usefulness:
    """recall@n and hit-rate@n of one recommendation list per ``holdout.users`` customer."""
    rows = np.searchsorted(holdout.users, holdout.held_out.get_column("user_handle").to_numpy())
    cols = np.searchsorted(cat.courses, holdout.held_out.get_column("course_id").to_numpy())
    truth = sp.csr_matrix(
        (np.ones(rows.shape[0]), (rows, cols)),
        shape=(holdout.users.shape[0], cat.courses.shape[0]),
    )
    recalls = np.zeros(holdout.users.shape[0])
    for i, rec in enumerate(recommendations):
        held = truth.indices[truth.indptr[i] : truth.indptr[i + 1]]
        hits = int(np.isin(rec, held).sum())
        recalls[i] = hits / held.shape[0]
    return Usefulness(
        recall=float(recalls.mean()) if recalls.size else 0.0,
        hit_rate=float((recalls > 0).mean()) if recalls.size else 0.0,
        customers=int(recalls.size),
    )


# --- the methods ---------------------------------------------------------------------------------


def raw_view_matrix(tables: Tables, users: np.ndarray, level: str) -> sp.csr_matrix:
    """Raw view seconds per (customer, course) or (customer, course tag): cosine-ready rows."""
    per_course = tables.views.group_by("user_handle", "course_id").agg(
        pl.col("view_time_seconds").sum().alias("value")
    )
    if level == "course":
        frame, labels = per_course.rename({"course_id": "label"}), tables.courses["course_id"]
    elif level == "tag":
        frame = (
            per_course.join(tables.course_tags, on="course_id", how="inner")
            .group_by("user_handle", "tag")
            .agg(pl.col("value").sum())
            .rename({"tag": "label"})
        )
        labels = tables.course_tags["tag"].unique()
    else:
        raise ValueError(level)
    return _sparse(frame, users, labels.sort().to_numpy())


def _sparse(frame: pl.DataFrame, users: np.ndarray, labels: np.ndarray) -> sp.csr_matrix:
    rows = np.searchsorted(users, frame.get_column("user_handle").to_numpy())
    cols = np.searchsorted(labels, frame.get_column("label").to_numpy())
    out = sp.csr_matrix(
        (frame.get_column("value").to_numpy().astype(np.float64), (rows, cols)),
        shape=(users.shape[0], labels.shape[0]),
    )
    out.eliminate_zeros()
    return out


def original_embedding(tables: Tables, users: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The replaced approach: mean view seconds per course tag, rows demeaned (over every tag
    column, zeros included), ``svds`` k, rows of ``U S``."""
    views = tables.views.join(tables.course_tags, on="course_id", how="inner")
    frame = views.group_by("user_handle", "tag").agg(
        pl.col("view_time_seconds").mean().alias("value")
    )
    x = _sparse(
        frame.rename({"tag": "label"}), users, tables.course_tags["tag"].unique().sort().to_numpy()
    )
    n_rows, n_cols = x.shape
    mean = np.asarray(x.sum(axis=1)).ravel() / n_cols
    xt = sp.csr_matrix(x.T)

    def matvec(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v).reshape(n_cols, -1)
        return np.asarray(x @ v - np.outer(mean, v.sum(axis=0)))

    def rmatvec(u: np.ndarray) -> np.ndarray:
        u = np.asarray(u).reshape(n_rows, -1)
        return np.asarray(xt @ u - np.outer(np.ones(n_cols), mean @ u))

    op = LinearOperator(
        (n_rows, n_cols),
        matvec=matvec,
        rmatvec=rmatvec,
        matmat=matvec,
        rmatmat=rmatvec,
        dtype=np.float64,
    )
    kk = min(k, min(n_rows, n_cols) - 1)
    v0 = np.random.default_rng(seed).uniform(-1.0, 1.0, size=min(n_rows, n_cols))
    u, s, _ = svds(op, k=kk, v0=v0, solver="arpack", random_state=seed)
    vectors = u * s
    vectors[np.asarray(x.getnnz(axis=1)) == 0] = 0.0  # nothing viewed: cannot be placed
    out: np.ndarray = normalise_rows(vectors)
    return out


# --- feature variants (the tuning grid) ----------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One way of building the customer x feature matrix and its space.

    ``value``: per block, how raw values become term weights: ``log1p``, ``binary`` or ``raw``
    (blocks missing from the mapping use the shipped rule: log1p for course/tag, as-is otherwise).
    ``idf_power``: the smooth IDF ``ln((1+n)/(1+df)) + 1`` raised to this power (2 = shipped,
    1 = the usual smooth IDF, the default before this harness, 0 = no IDF).
    ``dim``: SVD dimension, or None for cosine on the feature rows.
    """

    name: str
    weights: BlockWeights = field(default_factory=BlockWeights)
    value: Mapping[str, str] = field(default_factory=dict)
    idf_power: float = 2.0
    dim: int | None = None


def _long_blocks(tables: Tables) -> dict[str, pl.DataFrame]:
    """Raw (user_handle, label, value) triples per block, one row per (customer, feature).

    Written with polars joins and group-bys, independently of ``build.features`` (integer codes and
    sorts): ``variant_matrix`` of the default variant must reproduce the shipped matrix exactly,
    which checks both."""
    views = tables.views
    per_course = views.group_by("user_handle", "course_id").agg(
        pl.col("view_time_seconds").sum().alias("value")
    )
    per_tag = (
        per_course.join(tables.course_tags, on="course_id", how="inner")
        .group_by("user_handle", "tag")
        .agg(pl.col("value").sum())
    )
    interests = (
        tables.interests.select("user_handle", "tag")
        .unique()
        .with_columns(pl.lit(1.0).alias("value"))
    )
    assessments = tables.assessments.group_by("user_handle", "tag").agg(
        (pl.col("score").max().cast(pl.Float64) / 300.0).alias("value")
    )
    return {
        "course": per_course.rename({"course_id": "label"}),
        "tag": per_tag.rename({"tag": "label"}),
        "interest": interests.rename({"tag": "label"}),
        "assessment": assessments.rename({"tag": "label"}),
    }


def variant_matrix(
    tables: Tables, users: np.ndarray, variant: Variant
) -> tuple[sp.csr_matrix, np.ndarray]:
    """The feature matrix of ``variant`` (rows = ``users``) and its per-column IDF."""
    raw = _long_blocks(tables)
    vocab = {
        "course": tables.courses.get_column("course_id").sort().to_numpy(),
        "tag": tables.course_tags.get_column("tag").unique().sort().to_numpy(),
        "interest": raw["interest"].get_column("label").unique().sort().to_numpy(),
        "assessment": raw["assessment"].get_column("label").unique().sort().to_numpy(),
    }
    parts: list[sp.csr_matrix] = []
    idfs: list[np.ndarray] = []
    for name in BLOCKS:
        labels = vocab[name]
        block = _sparse(raw[name].filter(pl.col("label").is_in(labels)), users, labels)
        rule = variant.value.get(name, "log1p" if name in LOG_BLOCKS else "raw")
        if rule == "log1p":
            block.data = np.log1p(block.data)
        elif rule == "binary":
            block.data = np.ones_like(block.data)
        elif rule != "raw":
            raise ValueError(f"unknown value rule {rule!r}")
        block.eliminate_zeros()
        df = np.asarray(block.getnnz(axis=0), dtype=np.float64)
        n_block = int((block.getnnz(axis=1) > 0).sum())
        smooth = np.log((1.0 + n_block) / (1.0 + df)) + 1.0
        idf = (smooth**variant.idf_power).astype(np.float32).astype(np.float64)
        idfs.append(idf)
        block = sp.csr_matrix(block @ sp.diags(idf))
        weight = float(getattr(variant.weights, name))
        parts.append(sp.csr_matrix(normalise_rows(block) * weight))
    matrix = normalise_rows(sp.hstack(parts, format="csr"))
    return sp.csr_matrix(matrix, dtype=np.float64), np.concatenate(idfs)


def variant_space(tables: Tables, users: np.ndarray, variant: Variant, seed: int) -> Matrix:
    matrix, _ = variant_matrix(tables, users, variant)
    if variant.dim is None:
        return matrix
    emb = embed(sp.csr_matrix(matrix, dtype=np.float32), variant.dim, seed)
    return _place(users, users[emb.rows], emb.vectors.astype(np.float64))


def default_space(tables: Tables, users: np.ndarray, dim: int, seed: int) -> Matrix:
    """What ``build`` serves: ``build_features`` with the default weights, then ``embed``."""
    features = build_features(tables, BlockWeights())
    emb = embed(features.matrix, dim, seed)
    return _place(users, features.users[emb.rows], emb.vectors.astype(np.float64))


def variant_grid(dim: int) -> list[Variant]:
    """Every variant tried while choosing the defaults: 25 builds per dataset, bounded."""
    w = BlockWeights()
    only = {
        b: BlockWeights.model_validate({x: (1.0 if x == b else 0.0) for x in BLOCKS})
        for b in BLOCKS
    }
    return [
        Variant(f"shipped defaults (IDF squared, dim {dim})", dim=dim),
        Variant("IDF not squared (the previous default)", idf_power=1.0, dim=dim),
        Variant("IDF not squared, dim 128", idf_power=1.0, dim=128),
        Variant("no IDF", idf_power=0.0, dim=dim),
        Variant("IDF^1.5", idf_power=1.5, dim=dim),
        Variant("IDF^3", idf_power=3.0, dim=dim),
        *(Variant(f"dim {d}", dim=d) for d in (32, 128, 256) if d != dim),
        Variant("no SVD: cosine on the feature rows", dim=None),
        *(Variant(f"only {b}", weights=only[b], dim=dim) for b in BLOCKS),
        *(Variant(f"without {b}", weights=w.model_copy(update={b: 0.0}), dim=dim) for b in BLOCKS),
        Variant("interest x2", weights=w.model_copy(update={"interest": w.interest * 2}), dim=dim),
        Variant(
            "interest x0.7", weights=w.model_copy(update={"interest": w.interest * 0.7}), dim=dim
        ),
        Variant("tag x0.5", weights=w.model_copy(update={"tag": w.tag * 0.5}), dim=dim),
        Variant("tag x1.5", weights=w.model_copy(update={"tag": w.tag * 1.5}), dim=dim),
        Variant("tag x2", weights=w.model_copy(update={"tag": w.tag * 2}), dim=dim),
        Variant(
            "binary course+tag (viewed or not)",
            value={"course": "binary", "tag": "binary"},
            dim=dim,
        ),
        Variant(
            "raw seconds course+tag (no log1p)", value={"course": "raw", "tag": "raw"}, dim=dim
        ),
    ]


# --- fidelity of the served path -----------------------------------------------------------------


def served_recall(
    vectors: np.ndarray, k: int, sample: int, settings: BuildSettings
) -> dict[str, float]:
    """recall@k of Annoy + exact re-rank (the served path) against exact cosine."""
    n_items = vectors.shape[0]
    rng = np.random.default_rng(settings.seed)
    items = (
        np.arange(n_items)
        if sample <= 0 or sample >= n_items
        else np.sort(rng.choice(n_items, size=sample, replace=False))
    )
    exact = exact_top_k(vectors, items, k)
    item_user = np.arange(n_items, dtype=np.int64)
    hits = raw_hits = 0
    with tempfile.TemporaryDirectory() as tmp, fmt.ArtifactWriter(Path(tmp)) as writer:
        index = writer.build_index(vectors, settings.n_trees, settings.seed, n_jobs=1)
        # The search_k the build would serve with: tuned on its own seeded sample, as in build().
        search_k = tune_search_k(
            index,
            vectors,
            item_user,
            recall_truth(vectors, settings.recall_sample, settings.seed),
            candidates=settings.candidates,
            start=settings.base_search_k(),
            tune=settings.search_k == 0,
            target=settings.target_recall,
            progress=False,
        ).search_k
        for row, item in enumerate(items):
            truth = set(exact[row].tolist())
            cands = np.asarray(
                index.get_nns_by_item(
                    int(item), max(settings.candidates, k + 1), search_k=search_k
                ),
                dtype=np.int64,
            )
            raw_hits += len(truth.intersection(cands[cands != item][:k].tolist()))
            served, _ = rank_candidates(
                vectors, item_user, vectors[item], cands, k, exclude=int(item)
            )
            hits += len(truth.intersection(served.tolist()))
        index.unload()
    total = max(1, items.shape[0] * k)
    return {"served": hits / total, "annoy": raw_hits / total, "customers": float(items.shape[0])}


# --- one dataset, every method -------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """One method on one dataset. ``None`` = not applicable."""

    method: str
    recall: float
    hit_rate: float
    precision: float | None = None
    coverage: float | None = None
    fidelity: float | None = None
    seconds: float = 0.0
    baseline: bool = False


@dataclass(frozen=True)
class DatasetReport:
    name: str
    data_dir: Path
    customers: int
    evaluated: int
    held_out: int
    results: tuple[Result, ...]
    variants: tuple[Result, ...]
    fidelity: dict[str, float]
    seconds: float


SpaceBuilder = Callable[[Tables, np.ndarray], Matrix]


def _communities(path: Path, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row of each listed customer in ``users`` or -1, community per ``users`` row or -1)."""
    frame = pl.read_csv(path, schema={"user_handle": pl.Int64, "community": pl.Int64})
    handles = frame.get_column("user_handle").to_numpy()
    pos = np.searchsorted(users, handles)
    pos = np.minimum(pos, users.shape[0] - 1)
    known = users[pos] == handles
    rows = np.where(known, pos, -1)
    label = np.full(users.shape[0], -1, dtype=np.int64)
    label[rows[known]] = frame.get_column("community").to_numpy()[known]
    return rows, label


def community_precision(
    space: Matrix, rows: np.ndarray, label: np.ndarray, k: int
) -> tuple[float, float]:
    """(precision@k over every listed customer, share of them the space can place)."""
    placed = rows[rows >= 0]
    ids, _ = nearest(space, placed, k)
    same = (ids >= 0) & (label[np.maximum(ids, 0)] == label[placed][:, None])
    per_customer = np.zeros(rows.shape[0])
    per_customer[rows >= 0] = same.sum(axis=1) / k
    covered = np.zeros(rows.shape[0], dtype=bool)
    covered[rows >= 0] = _row_norms(space)[placed] > 1e-9
    return float(per_customer.mean()), float(covered.mean())


@dataclass(frozen=True)
class Bench:
    """One dataset, split and indexed once, ready to measure any number of methods."""

    tables: Tables
    holdout: Holdout
    cat: Catalogue  # training history; its ``users`` are the rows of every training space
    queries: np.ndarray  # rows of ``holdout.users`` in ``cat.users``
    full_users: np.ndarray  # rows of every full-data space
    truth: tuple[np.ndarray, np.ndarray] | None  # planted communities, see ``_communities``
    k: int
    n: int

    def measure(
        self,
        name: str,
        builder: SpaceBuilder | None,
        *,
        baseline: bool = False,
        fidelity: float | None = None,
    ) -> Result:
        """Usefulness (and community precision, on generated data) of one method.

        ``builder(tables, users)`` returns the method's space; None = the popular baseline.
        """
        started = time.perf_counter()
        if builder is None:
            recs = recommend_popular(self.cat, self.queries, self.n)
        else:
            space = builder(self.holdout.train, self.cat.users)
            ids, sims = nearest(space, self.queries, self.k)
            recs = recommend_from_neighbours(self.cat, self.queries, ids, sims, self.n)
        use = score_recommendations(self.cat, self.holdout, recs)
        precision = coverage = None
        if self.truth is not None and builder is not None:
            full = builder(self.tables, self.full_users)
            precision, coverage = community_precision(full, *self.truth, self.k)
        seconds = time.perf_counter() - started
        logger.info(
            "evaluate %-44s recall@%d %.4f  hit-rate@%d %.4f%s (%.1f s)",
            name,
            self.n,
            use.recall,
            self.n,
            use.hit_rate,
            "" if precision is None else f"  precision@{self.k} {precision:.4f}",
            seconds,
        )
        return Result(
            method=name,
            recall=use.recall,
            hit_rate=use.hit_rate,
            precision=precision,
            coverage=coverage,
            fidelity=fidelity,
            seconds=round(seconds, 1),
            baseline=baseline,
        )


def prepare(tables: Tables, communities: Path | None, *, k: int, n: int) -> Bench:
    holdout = leave_latest_out(tables)
    train_users = universe(holdout.train)
    full_users = universe(tables)
    return Bench(
        tables=tables,
        holdout=holdout,
        cat=catalogue(holdout.train, train_users),
        queries=np.searchsorted(train_users, holdout.users),
        full_users=full_users,
        truth=_communities(communities, full_users) if communities is not None else None,
        k=k,
        n=n,
    )


def evaluate_dataset(
    name: str,
    data_dir: Path,
    *,
    communities: Path | None,
    k: int,
    n: int,
    sample: int,
    seed: int,
    variants: bool,
) -> DatasetReport:
    """Every measurement of the module on one dataset."""
    started = time.perf_counter()
    settings = BuildSettings(data_dir=data_dir, seed=seed)
    tables = read_tables(data_dir)
    bench = prepare(tables, communities, k=k, n=n)

    # Fidelity of the served path, on the full build (reused for the community precision).
    t0 = time.perf_counter()
    features = build_features(tables, settings.weights)
    emb = embed(features.matrix, settings.dim, seed)
    fidelity = served_recall(emb.vectors, k, sample, settings)
    logger.info(
        "fidelity served recall@%d %.4f (Annoy alone %.4f) on %s customers (%.1f s)",
        k,
        fidelity["served"],
        fidelity["annoy"],
        f"{int(fidelity['customers']):,}",
        time.perf_counter() - t0,
    )
    full_default = _place(
        bench.full_users, features.users[emb.rows], emb.vectors.astype(np.float64)
    )

    def default(t: Tables, u: np.ndarray) -> Matrix:
        if t is tables:  # the full build above
            return full_default
        return default_space(t, u, settings.dim, seed)

    def original(t: Tables, u: np.ndarray) -> Matrix:
        return original_embedding(t, u, ORIGINAL_K, seed)

    def cosine_course(t: Tables, u: np.ndarray) -> Matrix:
        return normalise_rows(raw_view_matrix(t, u, "course"))

    def cosine_tag(t: Tables, u: np.ndarray) -> Matrix:
        return normalise_rows(raw_view_matrix(t, u, "tag"))

    results = [
        bench.measure(
            f"default (features + SVD dim {settings.dim})", default, fidelity=fidelity["served"]
        ),
        bench.measure("popular", None, baseline=True),
        bench.measure(
            f"original (tag mean seconds, demeaned, svds k={ORIGINAL_K})", original, baseline=True
        ),
        bench.measure(COSINE_COURSE, cosine_course, baseline=True),
        bench.measure("cosine-tag (raw view seconds)", cosine_tag, baseline=True),
    ]
    grid: list[Result] = []
    if variants:
        for variant in variant_grid(settings.dim):

            def build(t: Tables, u: np.ndarray, v: Variant = variant) -> Matrix:
                return variant_space(t, u, v, seed)

            grid.append(bench.measure(variant.name, build))
    return DatasetReport(
        name=name,
        data_dir=data_dir,
        customers=int(bench.full_users.shape[0]),
        evaluated=int(bench.holdout.users.shape[0]),
        held_out=int(bench.holdout.held_out.height),
        results=tuple(results),
        variants=tuple(grid),
        fidelity=fidelity,
        seconds=round(time.perf_counter() - started, 1),
    )


# --- output --------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _relative(value: float, reference: float | None) -> str:
    if reference is None or reference <= 0:
        return "n/a"
    return f"{(value / reference - 1.0) * 100:+.1f}%"


def _table(report: DatasetReport, rows: Sequence[Result], k: int, n: int) -> list[str]:
    reference = next((r.recall for r in report.results if r.method == COSINE_COURSE), None)
    generated = any(r.precision is not None for r in rows)
    head = ["method", f"recall@{n}", "vs cosine-course", f"hit-rate@{n}"]
    if generated:
        head += [f"community precision@{k}", "coverage"]
    head += [f"served recall@{k}", "seconds"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for r in rows:
        cells = [
            r.method + (" *(baseline)*" if r.baseline else ""),
            _fmt(r.recall),
            _relative(r.recall, reference),
            _fmt(r.hit_rate),
        ]
        if generated:
            cells += [_fmt(r.precision), _fmt(r.coverage, 3)]
        cells += [_fmt(r.fidelity), f"{r.seconds:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render(reports: Sequence[DatasetReport], k: int, n: int) -> str:
    """The markdown the command prints: one table per dataset, then the variant grids."""
    out: list[str] = []
    for report in reports:
        out += [
            f"### {report.name}: `{report.data_dir}`",
            "",
            f"{report.customers:,} customers; {report.evaluated:,} evaluated leave-latest-out "
            f"({report.held_out:,} held-out courses); served recall@{k} on "
            f"{int(report.fidelity['customers']):,} customers (Annoy alone "
            f"{report.fidelity['annoy']:.4f}); {report.seconds:.0f} s.",
            "",
            *_table(report, report.results, k, n),
            "",
        ]
    for report in reports:
        if report.variants:
            out += [
                f"### Variants on {report.name}",
                "",
                *_table(report, report.variants, k, n),
                "",
            ]
    return "\n".join(out)


def plot(reports: Sequence[DatasetReport], path: Path, k: int, n: int) -> Path | None:
    """Bar charts of the table (and of the grid, if run). None when matplotlib is missing."""
    try:
        import matplotlib as mpl

        mpl.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning(
            "matplotlib is not installed (it is in the `bench` group: uv sync --group bench); "
            "no plot written"
        )
        return None
    panels = [(r, r.results, "methods") for r in reports] + [
        (r, r.variants, "variants") for r in reports if r.variants
    ]
    heights = [max(2.5, 0.32 * len(rows) + 1.2) for _, rows, _ in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(9, sum(heights)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (report, rows, kind) in zip(axes[:, 0], panels, strict=True):
        y = np.arange(len(rows))
        has_precision = any(r.precision is not None for r in rows)
        bars = [
            (f"recall@{n}", [r.recall for r in rows]),
            (f"hit-rate@{n}", [r.hit_rate for r in rows]),
        ]
        if has_precision:
            bars.append((f"community precision@{k}", [r.precision or 0.0 for r in rows]))
        height = 0.8 / len(bars)
        for i, (label, values) in enumerate(bars):
            ax.barh(y + (i - (len(bars) - 1) / 2) * height, values, height=height, label=label)
        ax.set_yticks(y, [textwrap.fill(r.method, 34) for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(f"{report.name}: {kind}", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="similarity_api evaluate",
        description=(
            "Measure neighbour quality: fidelity of the served index, usefulness "
            "(leave-latest-out course recommendation) and, on generated data, planted-community "
            "precision, for the default build and the baselines. Prints a markdown table and "
            "writes a PNG."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data-dir", type=Path, required=True, help="folder with the activity CSVs")
    p.add_argument(
        "--generated-dir",
        type=Path,
        help="a `similarity_api generate` output folder (with communities.csv): evaluated too",
    )
    p.add_argument("--k", type=int, default=10, help="neighbours per customer")
    p.add_argument("--n", type=int, default=20, help="courses recommended per customer")
    p.add_argument(
        "--sample",
        type=int,
        default=10_000,
        help="customers whose served neighbours are checked against exact cosine (0 = all)",
    )
    p.add_argument("--seed", type=int, default=42, help="seed for svds, Annoy and sampling")
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks"), help="where the PNG goes")
    p.add_argument("--variants", action="store_true", help="also run the tuning grid (slower)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(message)s", stream=sys.stderr, force=True
    )
    if args.k < 1 or args.n < 1:
        print("error: --k and --n must be at least 1", file=sys.stderr)
        return 2
    started = time.perf_counter()
    datasets: list[tuple[str, Path, Path | None]] = [
        (args.data_dir.name or "data", args.data_dir, None)
    ]
    if args.generated_dir is not None:
        communities = args.generated_dir / COMMUNITIES
        if not communities.is_file():
            print(f"error: {communities}: missing (is this a `generate` output?)", file=sys.stderr)
            return 2
        datasets.append(("generated", args.generated_dir, communities))
    reports = []
    try:
        for name, data_dir, communities in datasets:
            reports.append(
                evaluate_dataset(
                    name,
                    data_dir,
                    communities=communities,
                    k=args.k,
                    n=args.n,
                    sample=args.sample,
                    seed=args.seed,
                    variants=args.variants,
                )
            )
    except SimilarityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(render(reports, args.k, args.n))
    png = plot(reports, args.out_dir / "quality.png", args.k, args.n)
    seconds = time.perf_counter() - started
    print(
        f"\n{'plot: ' + str(png) if png else 'no plot (matplotlib missing)'}; "
        f"{seconds:.0f} s wall on {os.cpu_count()} cores ({platform.machine()}, "
        f"Python {platform.python_version()})"
    )
    return 0
