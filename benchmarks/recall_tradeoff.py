"""Accuracy against cost: recall@10 of Annoy against exact search as the metric, n_trees and
search_k vary, with the query latency and the build cost of each index.

    .venv/bin/python benchmarks/recall_tradeoff.py --artifacts-dir /tmp/scale/art_1000000_deterministic

The truth is exact cosine top 10 over every indexed customer (``pipeline.exact_top_k``, chunked
brute force) for a seeded sample of customers. The rows are L2-normalised, so both Annoy metrics
rank as cosine does; they differ in how the trees split. The artifact's own index is reused for its
metric and n_trees; the others are built here (multi-threaded, into a temporary folder, deleted
after).
Latency is one query at a time on one thread: Annoy's ``get_nns_by_item`` for ``--candidates``
items, then the exact re-rank the service does. Writes benchmarks/results/recall_tradeoff.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from annoy import AnnoyIndex

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procmon
from similarity_api.artifact import Metric
from similarity_api.build.pipeline import RECALL_K, exact_top_k
from similarity_api.index import rank_candidates

RESULTS = Path(__file__).resolve().parent / "results"


def build_index(
    vectors: np.ndarray, metric: Metric, n_trees: int, seed: int, path: Path
) -> tuple[AnnoyIndex, float]:
    index = AnnoyIndex(int(vectors.shape[1]), metric)
    index.set_seed(seed)
    index.on_disk_build(str(path))
    started = time.perf_counter()
    for item, vector in enumerate(vectors):
        index.add_item(item, vector)
    index.build(n_trees, n_jobs=-1)
    return index, time.perf_counter() - started


def measure(
    index: AnnoyIndex,
    vectors: np.ndarray,
    item_user: np.ndarray,
    items: np.ndarray,
    truth: np.ndarray,
    search_k: int,
    candidates: int,
) -> dict[str, Any]:
    raw_hits = served_hits = 0
    annoy_ms = np.empty(len(items))
    total_ms = np.empty(len(items))
    for row, item in enumerate(items.tolist()):
        t0 = time.perf_counter()
        cands = index.get_nns_by_item(item, max(candidates, RECALL_K + 1), search_k=search_k)
        t1 = time.perf_counter()
        served, _ = rank_candidates(
            vectors, item_user, vectors[item], np.asarray(cands), RECALL_K, exclude=item
        )
        t2 = time.perf_counter()
        annoy_ms[row] = (t1 - t0) * 1e3
        total_ms[row] = (t2 - t0) * 1e3
        want = set(truth[row].tolist())
        raw = [i for i in cands[: RECALL_K + 1] if i != item][:RECALL_K]
        raw_hits += len(want.intersection(raw))
        served_hits += len(want.intersection(served.tolist()))
    total = len(items) * RECALL_K
    return {
        "search_k": search_k,
        "recall_at_10_annoy": round(raw_hits / total, 4),
        "recall_at_10_served": round(served_hits / total, 4),
        "annoy_p50_ms": round(float(np.percentile(annoy_ms, 50)), 3),
        "annoy_p99_ms": round(float(np.percentile(annoy_ms, 99)), 3),
        "query_p50_ms": round(float(np.percentile(total_ms, 50)), 3),
        "query_p99_ms": round(float(np.percentile(total_ms, 99)), 3),
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Recall against cost",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; load average at start "
        f"{m['load_avg_at_start']}.",
        f"Index: {result['n_items']:,} customers x {result['dim']} dims. Truth: exact "
        f"cosine top {RECALL_K} for {result['sample']:,} sampled customers "
        f"({result['exact_seconds']:.1f} s brute force). Candidates fetched: {result['candidates']}.",
        f"Defaults (the artifact's): metric {result['default_metric']}, n_trees "
        f"{result['default_n_trees']}, search_k {result['default_search_k']} (tuned by the build "
        f"to recall 0.95). Command: `{result['command']}`  Run at {result['started']}.",
        "",
        "| metric | n_trees | index MiB | build s | search_k | recall@10 Annoy | recall@10 served "
        "| Annoy p50 ms | Annoy p99 ms | + re-rank p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in result["trees"]:
        for r in t["points"]:
            mark = " **(default)**" if _is_default(result, t, r) else ""
            build = f"{t['build_seconds']:.0f}" + (" (1 thread)" if t["reused"] else "")
            lines.append(
                f"| {t['metric']} | {t['n_trees']} | {t['index_bytes'] / 2**20:.0f} | {build} "
                f"| {r['search_k']}{mark} "
                f"| {r['recall_at_10_annoy']:.4f} | {r['recall_at_10_served']:.4f} | {r['annoy_p50_ms']} "
                f"| {r['annoy_p99_ms']} | {r['query_p50_ms']} | {r['query_p99_ms']} |"
            )
    return "\n".join(lines) + "\n"


def _is_default(result: dict[str, Any], t: dict[str, Any], r: dict[str, Any]) -> bool:
    return bool(
        t["metric"] == result["default_metric"]
        and t["n_trees"] == result["default_n_trees"]
        and r["search_k"] == result["default_search_k"]
    )


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for t in result["trees"]:
        xs = [r["query_p50_ms"] for r in t["points"]]
        ys = [r["recall_at_10_annoy"] for r in t["points"]]
        style = "o-" if t["metric"] == result["default_metric"] else "s--"
        ax.plot(xs, ys, style, label=f"{t['metric']}, n_trees={t['n_trees']}")
        for r in t["points"]:
            ax.annotate(
                str(r["search_k"]),
                (r["query_p50_ms"], r["recall_at_10_annoy"]),
                fontsize=6,
                textcoords="offset points",
                xytext=(3, -8),
            )
        for r in t["points"]:
            if _is_default(result, t, r):
                ax.plot(
                    [r["query_p50_ms"]],
                    [r["recall_at_10_annoy"]],
                    "*",
                    ms=16,
                    color="k",
                    label="default",
                )
    ax.axhline(0.95, color="grey", ls=":", lw=0.8, label="target 0.95")
    ax.set_xscale("log")
    ax.set_xlabel("median query latency, ms (Annoy + exact re-rank, one thread)")
    ax.set_ylabel("recall@10 (Annoy, before re-ranking)")
    ax.set_title(
        f"Recall against latency, {result['n_items']:,} customers (labels: search_k)", fontsize=10
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--artifacts-dir", type=Path, required=True)
    p.add_argument(
        "--metrics", nargs="+", choices=["euclidean", "angular"], default=["euclidean", "angular"]
    )
    p.add_argument("--n-trees", type=int, nargs="+", default=[10, 20, 50])
    p.add_argument(
        "--search-k", type=int, nargs="+", default=[1000, 2500, 5000, 10000, 20000, 40000, 80000]
    )
    p.add_argument("--sample", type=int, default=1000)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--out", type=Path, default=RESULTS / "recall_tradeoff")
    args = p.parse_args(argv)

    version = (args.artifacts_dir / "current").resolve()
    manifest = json.loads((version / "manifest.json").read_text())
    vectors = np.load(version / "embeddings.npy", mmap_mode="r")
    item_user = np.load(version / "item_user.npy", mmap_mode="r")
    n_items, dim = vectors.shape
    rng = np.random.default_rng(args.seed)
    items = np.sort(rng.choice(n_items, size=min(args.sample, n_items), replace=False))
    t0 = time.perf_counter()
    truth = exact_top_k(vectors, items, RECALL_K)
    exact_seconds = time.perf_counter() - t0
    print(
        f"exact top {RECALL_K} of {len(items)} customers over {n_items:,}: {exact_seconds:.1f} s",
        flush=True,
    )

    default_n_trees = int(manifest["n_trees"])
    default_metric = str(manifest["metric"])
    result: dict[str, Any] = {
        "machine": procmon.machine(),
        "command": "benchmarks/recall_tradeoff.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "n_items": int(n_items),
        "dim": int(dim),
        "sample": len(items),
        "candidates": args.candidates,
        "exact_seconds": round(exact_seconds, 2),
        "default_metric": default_metric,
        "default_n_trees": default_n_trees,
        "default_search_k": int(manifest["search_k"]),
        "trees": [],
    }
    for metric in args.metrics:
        for n_trees in sorted(args.n_trees):
            search_ks = set(args.search_k) | {n_trees * args.candidates}
            if metric == default_metric and n_trees == default_n_trees:
                search_ks.add(result["default_search_k"])
            with tempfile.TemporaryDirectory(dir=args.tmp, prefix="recall-") as tmp:
                if metric == default_metric and n_trees == default_n_trees:
                    index = AnnoyIndex(dim, metric)
                    index.load(str(version / "index.ann"))
                    build_seconds = float(manifest["timings"]["index"])
                    index_bytes = (version / "index.ann").stat().st_size
                    reused = True
                else:
                    path = Path(tmp) / "index.ann"
                    index, build_seconds = build_index(
                        np.asarray(vectors), metric, n_trees, 42, path
                    )
                    index_bytes = path.stat().st_size
                    reused = False
                points = []
                for search_k in sorted(search_ks):
                    point = measure(
                        index, vectors, item_user, items, truth, search_k, args.candidates
                    )
                    points.append(point)
                    print(json.dumps({"metric": metric, "n_trees": n_trees, **point}), flush=True)
                index.unload()
            result["trees"].append(
                {
                    "metric": metric,
                    "n_trees": n_trees,
                    "build_seconds": round(build_seconds, 1),
                    "index_bytes": index_bytes,
                    "reused": reused,
                    "points": points,
                }
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text)
    plot(result, args.out.with_suffix(".png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
