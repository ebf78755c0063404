"""The original approach, for comparison: dense pandas pivot -> svds -> sklearn cosine kNN.

A customer x course-tag matrix of mean view seconds (pandas ``pivot_table``), demeaned per row,
factorised with ``scipy.sparse.linalg.svds`` (k=50), then ``sklearn.neighbors.NearestNeighbors``
(cosine, brute force) answers the 10 nearest customers of a sample of customers. Run it in a child
process with a memory cap (``build_scaling.py`` does): each finished stage prints one JSON line, so
a MemoryError is recorded with the stage it happened in.

    .venv/bin/python benchmarks/original_approach.py --data-dir /tmp/scale/data_100000
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def _emit(**fields: Any) -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({**fields, "peak_rss_bytes": peak}), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--k", type=int, default=50, help="svds components [50]")
    p.add_argument("--queries", type=int, default=1000, help="customers whose kNN is asked [1000]")
    p.add_argument("--neighbours", type=int, default=10)
    args = p.parse_args(argv)

    import numpy as np
    import pandas as pd
    from scipy.sparse.linalg import svds
    from sklearn.neighbors import NearestNeighbors

    stage = "read"
    started = t0 = time.perf_counter()
    try:
        views = pd.read_csv(
            args.data_dir / "user_course_views.csv",
            usecols=["user_handle", "course_id", "view_time_seconds"],
        )
        tags = pd.read_csv(args.data_dir / "course_tags.csv").dropna()
        _emit(stage=stage, seconds=round(time.perf_counter() - t0, 3), rows=len(views))

        stage = "pivot"
        t0 = time.perf_counter()
        merged = views.merge(tags, on="course_id", how="inner")
        del views
        dense = merged.pivot_table(
            index="user_handle",
            columns="course_tags",
            values="view_time_seconds",
            aggfunc="mean",
            fill_value=0,
        )
        del merged
        matrix = dense.to_numpy(dtype=np.float64)
        del dense
        _emit(
            stage=stage,
            seconds=round(time.perf_counter() - t0, 3),
            shape=list(matrix.shape),
            dense_bytes=int(matrix.nbytes),
        )

        stage = "demean"
        t0 = time.perf_counter()
        matrix = matrix - matrix.mean(axis=1, keepdims=True)
        _emit(stage=stage, seconds=round(time.perf_counter() - t0, 3))

        stage = "svds"
        t0 = time.perf_counter()
        k = min(args.k, min(matrix.shape) - 1)
        u, s, _vt = svds(matrix, k=k, random_state=42)
        embedding = u * s
        del matrix
        _emit(stage=stage, seconds=round(time.perf_counter() - t0, 3), k=k)

        stage = "knn_fit"
        t0 = time.perf_counter()
        nn = NearestNeighbors(n_neighbors=args.neighbours + 1, metric="cosine")
        nn.fit(embedding)
        _emit(stage=stage, seconds=round(time.perf_counter() - t0, 3))

        stage = "knn_query"
        t0 = time.perf_counter()
        rng = np.random.default_rng(42)
        n_q = min(args.queries, embedding.shape[0])
        sample = rng.choice(embedding.shape[0], size=n_q, replace=False)
        nn.kneighbors(embedding[sample])
        seconds = time.perf_counter() - t0
        _emit(
            stage=stage,
            seconds=round(seconds, 3),
            queries=n_q,
            ms_per_query=round(seconds / n_q * 1e3, 3),
        )
    except MemoryError:
        _emit(stage=stage, error="MemoryError", seconds=round(time.perf_counter() - t0, 3))
        return 3
    _emit(stage="total", seconds=round(time.perf_counter() - started, 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
