"""svds in single against double precision on the shipped feature matrix: time, singular values,
and whether the exact top 10 neighbours of sampled customers change.

    .venv/bin/python benchmarks/svd_precision.py --data-dir ../shared/data/pluralsight
    .venv/bin/python benchmarks/svd_precision.py --data-dir /tmp/scale/data_100000

Both runs use one BLAS thread, the seeded start vector and k of the build (``embed``'s recipe
without the sign fix, which changes no cosine). Prints one markdown table row per run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.sparse.linalg import svds
from threadpoolctl import threadpool_limits

from similarity_api.build.features import build_features
from similarity_api.build.ingest import read_tables
from similarity_api.build.pipeline import exact_top_k
from similarity_api.settings import BlockWeights


def _embed(matrix: object, dtype: type, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    x = matrix.astype(dtype)  # type: ignore[attr-defined]
    v0 = np.random.default_rng(seed).uniform(-1.0, 1.0, size=min(x.shape)).astype(dtype)
    started = time.perf_counter()
    u, s, _ = svds(x, k=k, v0=v0, solver="arpack", random_state=seed)
    seconds = time.perf_counter() - started
    order = np.argsort(-s, kind="stable")
    vectors = u[:, order].astype(np.float64) * s[order]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), s[order].astype(np.float64), seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--sample", type=int, default=1000)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    features = build_features(read_tables(args.data_dir), BlockWeights())
    with threadpool_limits(limits=1):
        double, s64, t64 = _embed(features.matrix, np.float64, args.dim, args.seed)
        single, s32, t32 = _embed(features.matrix, np.float32, args.dim, args.seed)
    items = np.random.default_rng(0).choice(double.shape[0], args.sample, replace=False)
    a, b = exact_top_k(double, items, 10), exact_top_k(single, items, 10)
    overlap = float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)]))
    print(
        "| data | customers | float64 s | float32 s | ratio | max abs singular value diff "
        "| exact top-10 overlap |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.data_dir} | {double.shape[0]:,} | {t64:.1f} | {t32:.1f} | {t64 / t32:.2f} "
        f"| {np.abs(s64 - s32).max():.1e} | {overlap:.4f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
