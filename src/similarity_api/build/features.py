"""Features: validated tables -> one sparse CSR customer x feature matrix, plus per-customer summaries.

The matrix is the horizontal concatenation of signal blocks, in this order:

=============  =====================================  ===========================================
block          raw value per (customer, feature)      transform
=============  =====================================  ===========================================
``course``     total view seconds of the course       log1p, x IDF, block L2-normalised, x weight
``tag``        view seconds of courses with that tag  log1p, x IDF, block L2-normalised, x weight
``interest``   1 if the customer follows the tag      x IDF, block L2-normalised, x weight
``assessment`` best score / 300                       x IDF, block L2-normalised, x weight
=============  =====================================  ===========================================

and finally each customer's whole row is L2-normalised, so every customer weighs the same in the
factorisation. IDF is ``(ln((1 + n) / (1 + df)) + 1) ** 2`` with ``n`` the customers having any
value in the block and ``df`` those having the feature: the smooth IDF, squared, because rare
courses and tags say more about who a customer is like than the usual IDF credits them for
(``python -m similarity_api evaluate --variants``: +8% recall@20 on the Pluralsight data, +4% on
generated data; see benchmarks/quality.md). The same transform, for one row, is
``similarity_api.space.transform_profile``: a described behaviour is folded in with it.

Nothing here is ever dense, and nothing past the first step handles text: customers become row
numbers and labels become column numbers (polars Enum codes over the sorted vocabulary), and every
aggregation is a stable sort of one integer key per (row, column) followed by a sum over each run,
so sums are taken in input order and the result is the same on any machine.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from similarity_api.build.ingest import Tables
from similarity_api.settings import BlockWeights
from similarity_api.space import BLOCKS, LOG_BLOCKS, Block, FeatureSpace

logger = logging.getLogger(__name__)

TOP_TAGS = 5
MAX_SCORE = 300.0
#: Customer handles are looked up in a direct table (handle -> row) when the largest handle is at
#: most this many times the number of customers; else by binary search.
_DIRECT_LOOKUP_SPREAD = 4


@dataclass(frozen=True)
class Summaries:
    """Per-customer facts for explanations, aligned with ``FeatureMatrix.users``."""

    courses_viewed: np.ndarray  # int32
    view_time_seconds: np.ndarray  # float64
    interests: np.ndarray  # int32, distinct tags followed
    assessments: np.ndarray  # int32, distinct tags assessed
    top_tags: np.ndarray  # int32 (n_users, TOP_TAGS): feature columns (tag block), -1 padded


@dataclass(frozen=True)
class FeatureMatrix:
    users: np.ndarray  # int64, sorted: every customer with at least one accepted row
    matrix: sp.csr_matrix  # float32 (len(users), n_features), rows L2-normalised (or empty)
    space: FeatureSpace
    summaries: Summaries
    seconds: float


@dataclass(frozen=True)
class LongBlock:
    """One block's raw values: one entry per (customer row, block column), sorted by both."""

    labels: list[str]  # the block's vocabulary, sorted; column c is labels[c]
    rows: np.ndarray  # int64
    cols: np.ndarray  # int64, within the block
    values: np.ndarray  # float64, before any transform


def _row_norms(rows: np.ndarray, values: np.ndarray, n_rows: int) -> np.ndarray:
    """L2 norm of each row's values (0 for a row with none)."""
    return np.sqrt(np.bincount(rows, weights=values * values, minlength=n_rows))


def _idf(df: np.ndarray, n: int) -> np.ndarray:
    smooth = np.log((1.0 + n) / (1.0 + df)) + 1.0
    return (smooth**2).astype(np.float32)


def _codes(values: pl.Series, labels: list[str]) -> np.ndarray:
    """The position of each value in the sorted, unique ``labels`` (each value must be one)."""
    return values.cast(pl.Enum(labels)).to_physical().to_numpy().astype(np.int64)


def _rows_of(users: np.ndarray, handles: np.ndarray) -> np.ndarray:
    """The row of each handle in the sorted ``users`` (each handle must be one)."""
    if users.size and users[0] >= 0 and users[-1] < _DIRECT_LOOKUP_SPREAD * users.size + 1024:
        table = np.full(int(users[-1]) + 1, -1, dtype=np.int64)
        table[users] = np.arange(users.size, dtype=np.int64)
        rows: np.ndarray = table[handles]
        return rows
    return np.searchsorted(users, handles).astype(np.int64)


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stable order of ``keys``, the distinct keys ascending, where each run starts in order)."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    return order, ordered[starts], starts


def _reduce_by(
    rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_cols: int, op: np.ufunc
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``op`` (np.add: sum, np.maximum: largest) of ``values`` per (row, col), taken in input
    order: (rows, cols, results) sorted by row then col."""
    if rows.size == 0:
        return rows, cols, values.astype(np.float64)
    order, keys, starts = _runs(rows * n_cols + cols)
    reduced = op.reduceat(values.astype(np.float64)[order], starts)
    return keys // n_cols, keys % n_cols, reduced


def _distinct(rows: np.ndarray, cols: np.ndarray, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (row, col) pairs, sorted by row then col."""
    if rows.size == 0:
        return rows, cols
    _, keys, _ = _runs(rows * n_cols + cols)
    return keys // n_cols, keys % n_cols


def _expand(
    indptr: np.ndarray, targets: np.ndarray, sources: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each entry with source s: one copy per target of s (CSR ``indptr``/``targets``).
    Returns (the entry each copy comes from, the copy's target)."""
    counts = indptr[sources + 1] - indptr[sources]
    entry = np.repeat(np.arange(sources.size, dtype=np.int64), counts)
    first = np.repeat(indptr[sources] - (np.cumsum(counts) - counts), counts)
    return entry, targets[first + np.arange(entry.size, dtype=np.int64)]


def users_of(tables: Tables) -> np.ndarray:
    """Every customer with at least one accepted row in any file: int64, ascending."""
    return (
        pl.concat(
            [
                tables.views.get_column("user_handle"),
                tables.interests.get_column("user_handle"),
                tables.assessments.get_column("user_handle"),
            ]
        )
        .unique()
        .sort()
        .to_numpy()
        .astype(np.int64)
    )


def long_blocks(tables: Tables, users: np.ndarray) -> dict[str, LongBlock]:
    """Raw (row, column, value) entries per block, rows of ``users``, one per (customer, feature).

    Courses and tags come from the catalogue, so every known course and tag has a column even if
    nobody viewed it (a profile may name it); interests and assessments have the tags seen.
    """
    courses = tables.courses.get_column("course_id").to_list()  # sorted, unique
    tags = tables.course_tags.get_column("tag").unique().sort().to_list()

    views = tables.views
    rows, cols, seconds = _reduce_by(
        _rows_of(users, views.get_column("user_handle").to_numpy()),
        _codes(views.get_column("course_id"), courses),
        views.get_column("view_time_seconds").to_numpy(),
        len(courses),
        np.add,
    )
    course = LongBlock(labels=courses, rows=rows, cols=cols, values=seconds)

    # course -> its tags, as CSR over course codes (course_tags is sorted by course, then tag)
    tag_course = _codes(tables.course_tags.get_column("course_id"), courses)
    tag_code = _codes(tables.course_tags.get_column("tag"), tags)
    indptr = np.concatenate(([0], np.cumsum(np.bincount(tag_course, minlength=len(courses)))))
    entry, tag_cols = _expand(indptr, tag_code, course.cols)
    tag = LongBlock(
        tags, *_reduce_by(course.rows[entry], tag_cols, course.values[entry], len(tags), np.add)
    )

    labels = tables.interests.get_column("tag").unique().sort().to_list()
    rows, cols = _distinct(
        _rows_of(users, tables.interests.get_column("user_handle").to_numpy()),
        _codes(tables.interests.get_column("tag"), labels),
        len(labels),
    )
    interest = LongBlock(labels=labels, rows=rows, cols=cols, values=np.ones(rows.size))

    labels = tables.assessments.get_column("tag").unique().sort().to_list()
    rows, cols, best = _reduce_by(
        _rows_of(users, tables.assessments.get_column("user_handle").to_numpy()),
        _codes(tables.assessments.get_column("tag"), labels),
        tables.assessments.get_column("score").to_numpy(),
        len(labels),
        np.maximum,
    )
    assessment = LongBlock(labels=labels, rows=rows, cols=cols, values=best / MAX_SCORE)
    return {"course": course, "tag": tag, "interest": interest, "assessment": assessment}


def build_features(tables: Tables, weights: BlockWeights) -> FeatureMatrix:
    """Aggregate validated tables into the customer x feature matrix and the summaries."""
    started = time.perf_counter()
    users = users_of(tables)
    n_users = users.size
    raw = long_blocks(tables, users)

    names: list[str] = []
    blocks: list[Block] = []
    idf_parts: list[np.ndarray] = []
    row_parts: list[np.ndarray] = []
    col_parts: list[np.ndarray] = []
    value_parts: list[np.ndarray] = []
    for name in BLOCKS:
        long = raw[name]
        start = len(names)
        block = Block(
            name=name,
            start=start,
            stop=start + len(long.labels),
            weight=float(getattr(weights, name)),
            log=name in LOG_BLOCKS,
        )
        blocks.append(block)
        names.extend(long.labels)
        values = np.log1p(long.values) if block.log else long.values
        keep = values > 0
        rows, cols, values = long.rows[keep], long.cols[keep], values[keep]
        df = np.bincount(cols, minlength=len(long.labels)).astype(np.float64)
        n_block_users = int(np.count_nonzero(np.bincount(rows, minlength=n_users)))
        idf = _idf(df, n_block_users)
        idf_parts.append(idf)
        values = values * idf.astype(np.float64)[cols]
        values = values / _row_norms(rows, values, n_users)[rows] * block.weight
        keep = values > 0
        row_parts.append(rows[keep])
        col_parts.append(cols[keep] + start)
        value_parts.append(values[keep])
        logger.debug("block %s: %d columns, %d values", name, len(long.labels), int(keep.sum()))

    rows = np.concatenate(row_parts)
    cols = np.concatenate(col_parts)
    values = np.concatenate(value_parts)
    del row_parts, col_parts, value_parts
    values = values / _row_norms(rows, values, n_users)[rows]
    # No sort needed: (row, col) pairs are unique and the CSR conversion orders rows and columns.
    matrix = sp.csr_matrix(
        (values.astype(np.float32), (rows, cols)),
        shape=(n_users, len(names)),
        dtype=np.float32,
    )
    del rows, cols, values
    matrix.sort_indices()
    space = FeatureSpace(
        names=tuple(names), blocks=tuple(blocks), idf=np.concatenate(idf_parts).astype(np.float32)
    )
    summaries = _summaries(raw, n_users, space.block("tag").start)
    seconds = round(time.perf_counter() - started, 3)
    logger.info(
        "features %s customers x %s features, %s non-zeros (%.1f s)",
        f"{n_users:,}",
        f"{len(names):,}",
        f"{matrix.nnz:,}",
        seconds,
    )
    return FeatureMatrix(
        users=users, matrix=matrix, space=space, summaries=summaries, seconds=seconds
    )


def _summaries(raw: dict[str, LongBlock], n_users: int, tag_start: int) -> Summaries:
    course, tag = raw["course"], raw["tag"]
    # Top tags by view seconds, ties by tag (label order): rows ascending, seconds descending; the
    # entries are sorted by (row, tag) already, so a stable sort on seconds keeps tags in order.
    viewed = tag.values > 0
    rows, cols, seconds = tag.rows[viewed], tag.cols[viewed], tag.values[viewed]
    order = np.lexsort((-seconds, rows))
    rows, cols = rows[order], cols[order]
    starts = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1])))
    rank = np.arange(rows.size) - np.repeat(starts, np.diff(np.append(starts, rows.size)))
    top = np.full((n_users, TOP_TAGS), -1, dtype=np.int32)
    head = rank < TOP_TAGS
    top[rows[head], rank[head]] = (cols[head] + tag_start).astype(np.int32)
    return Summaries(
        courses_viewed=np.bincount(course.rows, minlength=n_users).astype(np.int32),
        view_time_seconds=np.bincount(course.rows, weights=course.values, minlength=n_users),
        interests=np.bincount(raw["interest"].rows, minlength=n_users).astype(np.int32),
        assessments=np.bincount(raw["assessment"].rows, minlength=n_users).astype(np.int32),
        top_tags=top,
    )
