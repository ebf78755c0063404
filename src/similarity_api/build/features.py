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

Nothing here is ever dense: the matrix is built from long (row, column, value) frames.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from similarity_api.build.ingest import Tables
from similarity_api.settings import BlockWeights
from similarity_api.space import BLOCKS, LOG_BLOCKS, Block, FeatureSpace

logger = logging.getLogger(__name__)

TOP_TAGS = 5


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


def _row_norms(rows: np.ndarray, values: np.ndarray, n_rows: int) -> np.ndarray:
    """L2 norm of each row's values (0 for a row with none)."""
    return np.sqrt(np.bincount(rows, weights=values * values, minlength=n_rows))


def _idf(df: np.ndarray, n: int) -> np.ndarray:
    smooth = np.log((1.0 + n) / (1.0 + df)) + 1.0
    return (smooth**2).astype(np.float32)


def _long_blocks(tables: Tables) -> dict[str, pl.DataFrame]:
    """Raw (user_handle, label, value) triples per block, one row per (customer, feature)."""
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


def _vocabulary(tables: Tables, raw: Mapping[str, pl.DataFrame]) -> dict[str, list[str]]:
    """Sorted labels per block. Courses and tags come from the catalogue, so every known course and
    tag has a column even if nobody viewed it (a profile may name it)."""
    return {
        "course": tables.courses.get_column("course_id").sort().to_list(),
        "tag": tables.course_tags.get_column("tag").unique().sort().to_list(),
        "interest": raw["interest"].get_column("label").unique().sort().to_list(),
        "assessment": raw["assessment"].get_column("label").unique().sort().to_list(),
    }


def build_features(tables: Tables, weights: BlockWeights) -> FeatureMatrix:
    """Aggregate validated tables into the customer x feature matrix and the summaries."""
    started = time.perf_counter()
    users = (
        pl.concat(
            [
                tables.views.select("user_handle"),
                tables.interests.select("user_handle"),
                tables.assessments.select("user_handle"),
            ]
        )
        .unique()
        .sort("user_handle")
        .with_row_index("row")
    )
    raw = _long_blocks(tables)
    vocab = _vocabulary(tables, raw)

    names: list[str] = []
    blocks: list[Block] = []
    idf_parts: list[np.ndarray] = []
    row_parts: list[np.ndarray] = []
    col_parts: list[np.ndarray] = []
    value_parts: list[np.ndarray] = []
    n_users = users.height
    for name in BLOCKS:
        labels = vocab[name]
        start = len(names)
        block = Block(
            name=name,
            start=start,
            stop=start + len(labels),
            weight=float(getattr(weights, name)),
            log=name in LOG_BLOCKS,
        )
        blocks.append(block)
        names.extend(labels)
        columns = pl.DataFrame(
            {"label": labels, "col": np.arange(start, start + len(labels), dtype=np.int64)},
            schema={"label": pl.String, "col": pl.Int64},
        )
        frame = (
            raw[name]
            .join(columns, on="label", how="inner")
            .join(users, on="user_handle", how="inner")
            .select(pl.col("row").cast(pl.Int64), "col", pl.col("value").cast(pl.Float64))
        )
        # Per-row sums with np.bincount: a window (``.over("row")``) over tens of millions of
        # values costs a hash group-by each time; the row numbers are already dense indices.
        rows = frame.get_column("row").to_numpy()
        cols = frame.get_column("col").to_numpy()
        values = frame.get_column("value").to_numpy()
        del frame
        if block.log:
            values = np.log1p(values)
        keep = values > 0
        rows, cols, values = rows[keep], cols[keep], values[keep]
        df = np.bincount(cols - start, minlength=len(labels)).astype(np.float64)
        n_block_users = int(np.count_nonzero(np.bincount(rows, minlength=n_users)))
        idf = _idf(df, n_block_users)
        idf_parts.append(idf)
        values = values * idf.astype(np.float64)[cols - start]
        values = values / _row_norms(rows, values, n_users)[rows] * block.weight
        keep = values > 0
        row_parts.append(rows[keep])
        col_parts.append(cols[keep])
        value_parts.append(values[keep])
        logger.debug("block %s: %d columns, %d values", name, len(labels), int(keep.sum()))

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
    matrix.sort_indices()
    space = FeatureSpace(
        names=tuple(names), blocks=tuple(blocks), idf=np.concatenate(idf_parts).astype(np.float32)
    )
    summaries = _summaries(tables, users, raw, space)
    seconds = round(time.perf_counter() - started, 3)
    logger.info(
        "features %s customers x %s features, %s non-zeros (%.1f s)",
        f"{n_users:,}",
        f"{len(names):,}",
        f"{matrix.nnz:,}",
        seconds,
    )
    return FeatureMatrix(
        users=users.get_column("user_handle").to_numpy().astype(np.int64),
        matrix=matrix,
        space=space,
        summaries=summaries,
        seconds=seconds,
    )


def _per_user(users: pl.DataFrame, frame: pl.DataFrame, expr: pl.Expr, dtype: type) -> np.ndarray:
    joined = users.join(
        frame.group_by("user_handle").agg(expr.alias("x")), on="user_handle", how="left"
    )
    return joined.sort("row").get_column("x").fill_null(0).to_numpy().astype(dtype)


def _summaries(
    tables: Tables, users: pl.DataFrame, raw: Mapping[str, pl.DataFrame], space: FeatureSpace
) -> Summaries:
    tag_block = space.block("tag")
    tag_cols = pl.DataFrame(
        {
            "label": list(space.names[tag_block.start : tag_block.stop]),
            "tag_index": np.arange(tag_block.start, tag_block.stop, dtype=np.int32),
        }
    )
    ranked = (
        raw["tag"]
        .filter(pl.col("value") > 0)
        .join(tag_cols, on="label", how="inner")
        # tag_index follows the sorted labels, so ties break by label, on integers
        .sort(["user_handle", "value", "tag_index"], descending=[False, True, False])
        .group_by("user_handle", maintain_order=True)
        .head(TOP_TAGS)
        .join(users, on="user_handle", how="inner")
        .with_columns(pl.int_range(pl.len()).over("row").alias("rank"))
    )
    top = np.full((users.height, TOP_TAGS), -1, dtype=np.int32)
    top[ranked.get_column("row").to_numpy(), ranked.get_column("rank").to_numpy()] = (
        ranked.get_column("tag_index").to_numpy()
    )
    return Summaries(
        courses_viewed=_per_user(users, raw["course"], pl.len(), np.int32),
        view_time_seconds=_per_user(users, raw["course"], pl.col("value").sum(), np.float64),
        interests=_per_user(users, raw["interest"], pl.len(), np.int32),
        assessments=_per_user(users, raw["assessment"], pl.len(), np.int32),
        top_tags=top,
    )
