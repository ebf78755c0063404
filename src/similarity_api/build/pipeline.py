"""The offline build: ingest -> features -> embeddings -> Annoy + metadata -> published artifact."""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from annoy import AnnoyIndex
from threadpoolctl import threadpool_info, threadpool_limits
from tqdm import tqdm

from similarity_api import artifact as fmt
from similarity_api.build.embeddings import Embedding, embed
from similarity_api.build.features import FeatureMatrix, build_features
from similarity_api.build.ingest import Tables, read_tables
from similarity_api.errors import BuildError
from similarity_api.index import rank_candidates
from similarity_api.progress import ticking
from similarity_api.settings import BuildSettings

logger = logging.getLogger(__name__)

RECALL_K = 10
#: Tuning raises search_k by this factor per step, at most TUNING_STEPS times (x32 in all): the
#: cost of a search grows about linearly with search_k, so a finer ladder stops closer to the target.
TUNING_FACTOR = 2**0.5
TUNING_STEPS = 10
#: Bisections between the last miss and the first hit of the ladder: within 2^(1/8) (9 %).
REFINE_STEPS = 2
#: Tuning holds the lower end of recall's 95% confidence interval (mean - Z * standard error over
#: the sampled customers) to the target, not the sample's mean: at 1M customers the least search_k
#: whose mean met 0.95 on the build's 1,000 customers (0.9508) gave 0.9483 on another 1,000.
CONFIDENCE_Z = 1.96
SELF_TEST_K = 10
_EXACT_CHUNK = 65_536


@dataclass(frozen=True)
class BuildResult:
    path: Path
    manifest: fmt.Manifest
    rejected: dict[str, dict[str, int]]


def _libraries() -> dict[str, str]:
    names = ("similarity-api", "numpy", "scipy", "polars", "annoy", "threadpoolctl")
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def exact_top_k(vectors: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Brute-force cosine top-k of each item in ``items`` (itself excluded): int64 (len, k).

    Chunked over the corpus so memory stays at len(items) x chunk floats. Once a query has k
    candidates, only the scores of a chunk that beat its current k-th best are looked at, so the
    selection cost is a comparison per score, not a partition. Ties go to the lower item.
    """
    queries = np.asarray(vectors[items])
    n_queries = len(items)
    best_sims = np.full((n_queries, k), -np.inf, dtype=np.float32)
    best_ids = np.full((n_queries, k), -1, dtype=np.int64)
    query_rows = np.arange(n_queries)
    for start in range(0, vectors.shape[0], _EXACT_CHUNK):
        block = np.asarray(vectors[start : start + _EXACT_CHUNK])
        sims = queries @ block.T
        own = (items >= start) & (items < start + block.shape[0])
        sims[np.flatnonzero(own), items[own] - start] = -np.inf
        hit = sims > best_sims[:, -1:]
        if int(np.count_nonzero(hit)) > 4 * k * n_queries:
            top = min(k, sims.shape[1])
            cols = np.argpartition(-sims, top - 1, axis=1)[:, :top]
            rows = np.repeat(query_rows, top)
            cols = cols.ravel()
        else:
            rows, cols = np.nonzero(hit)
        if rows.size == 0:
            continue
        cand_rows = np.concatenate([np.repeat(query_rows, k), rows])
        cand_sims = np.concatenate([best_sims.ravel(), sims[rows, cols]])
        cand_ids = np.concatenate([best_ids.ravel(), cols.astype(np.int64) + start])
        order = np.lexsort((cand_ids, -cand_sims, cand_rows))
        counts = np.bincount(cand_rows, minlength=n_queries)
        first = np.cumsum(counts) - counts
        pick = order[(first[:, None] + np.arange(k)).ravel()]
        best_sims = cand_sims[pick].reshape(n_queries, k)
        best_ids = cand_ids[pick].reshape(n_queries, k)
    return best_ids


@dataclass(frozen=True)
class Tuning:
    """The search_k chosen for the index and the recall measured on the way to it."""

    search_k: int
    steps: tuple[fmt.RecallStep, ...]  # in the order tried
    sample: int

    @property
    def chosen(self) -> fmt.RecallStep | None:
        """The step measured at the chosen search_k (None when recall was not measured)."""
        return next((s for s in self.steps if s.search_k == self.search_k), None)


@dataclass(frozen=True)
class RecallTruth:
    """A seeded sample of items and their exact cosine top RECALL_K (itself excluded)."""

    items: np.ndarray  # int64, ascending
    exact: np.ndarray  # int64 (len(items), RECALL_K)


def recall_truth(vectors: np.ndarray, sample: int, seed: int) -> RecallTruth | None:
    """The truth recall is measured against, or None when there is nothing to measure. Brute
    force (``exact_top_k``): it needs only the embeddings, so the build runs it alongside the
    single-threaded Annoy build."""
    n_items = vectors.shape[0]
    if n_items <= RECALL_K or sample == 0:
        return None
    rng = np.random.default_rng(seed)
    items = np.sort(rng.choice(n_items, size=min(sample, n_items), replace=False))
    return RecallTruth(items=items, exact=exact_top_k(vectors, items, RECALL_K))


def tune_search_k(
    index: AnnoyIndex,
    vectors: np.ndarray,
    item_user: np.ndarray,
    truth: RecallTruth | None,
    *,
    candidates: int,
    start: int,
    tune: bool,
    target: float,
    progress: bool,
) -> Tuning:
    """recall@10 against exact cosine on a seeded sample of customers, at ``start``; with ``tune``,
    the smallest search_k found that brings Annoy's own recall@10 to ``target``.

    The cost of a search grows about linearly with search_k while recall saturates, and a larger
    search_k only adds candidates (recall never drops): so search_k climbs a ladder (x
    TUNING_FACTOR, at most TUNING_STEPS times) until the target is met, then REFINE_STEPS
    bisections (geometric) between the last miss and the first hit bring it closer to the least
    that meets it. Each step records Annoy's own top 10 and the served top 10 (``candidates`` from
    Annoy, exactly re-ranked); the chosen search_k is the smallest that met the target, or the
    largest tried when none did."""
    if truth is None:
        return Tuning(search_k=start, steps=(), sample=0)
    items, exact = truth.items, truth.exact
    n = max(candidates, RECALL_K + 1)
    steps: list[fmt.RecallStep] = []

    def met(search_k: int) -> bool:
        step = _recall_at(index, vectors, item_user, items, exact, n, search_k, progress)
        steps.append(step)
        logger.info(
            "recall@10 at search_k %d: Annoy %.4f (95%% CI from %.4f), served %.4f",
            search_k,
            step.recall_at_10_annoy,
            recall_floor(step),
            step.recall_at_10_served,
        )
        return recall_floor(step) >= target

    miss, hit = 0, 0
    for rung in range(TUNING_STEPS + 1):
        search_k = tuning_ladder(start, rung)
        if met(search_k) or not tune:
            hit = search_k
            break
        miss = search_k
    if tune and hit and miss:
        for _ in range(REFINE_STEPS):
            middle = round((miss * hit) ** 0.5)
            if middle in (miss, hit):
                break
            if met(middle):
                hit = middle
            else:
                miss = middle
    chosen = hit or steps[-1].search_k
    return Tuning(search_k=chosen, steps=tuple(steps), sample=len(items))


def recall_floor(step: fmt.RecallStep) -> float:
    """What tuning holds to the target: the confidence bound when recorded, else the mean."""
    if step.recall_at_10_annoy_low is None:
        return step.recall_at_10_annoy
    return step.recall_at_10_annoy_low


def tuning_ladder(start: int, step: int) -> int:
    """The search_k of rung ``step`` of the ladder (0 = ``start``): start x sqrt(2)^step."""
    return round(start * TUNING_FACTOR**step)


def _recall_at(
    index: AnnoyIndex,
    vectors: np.ndarray,
    item_user: np.ndarray,
    items: np.ndarray,
    exact: np.ndarray,
    n: int,
    search_k: int,
    progress: bool,
) -> fmt.RecallStep:
    def hits(row: int) -> tuple[int, int]:
        # One Annoy search per customer: with an explicit search_k the candidate set does not
        # depend on n, so Annoy's own top 10 is the head of the same answer.
        item = int(items[row])
        truth = set(exact[row].tolist())
        cands = np.asarray(index.get_nns_by_item(item, n, search_k=search_k))
        raw = [i for i in cands[: RECALL_K + 1].tolist() if i != item]
        served, _ = rank_candidates(
            vectors, item_user, vectors[item], cands, RECALL_K, exclude=item
        )
        return len(truth.intersection(raw[:RECALL_K])), len(truth.intersection(served.tolist()))

    # Annoy releases the GIL while searching: the lookups run on every core, in a fixed order.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        found = np.array(
            list(
                tqdm(
                    pool.map(hits, range(len(items))),
                    total=len(items),
                    desc=f"recall at search_k {search_k}",
                    disable=not progress,
                    leave=False,
                )
            ),
            dtype=np.float64,
        ).reshape(-1, 2)
    raw, served = found[:, 0] / RECALL_K, found[:, 1] / RECALL_K
    return fmt.RecallStep(
        search_k=search_k,
        recall_at_10_annoy=round(float(raw.mean()), 4),
        recall_at_10_served=round(float(served.mean()), 4),
        recall_at_10_annoy_low=round(recall_low(raw), 4),
    )


def recall_low(per_customer: np.ndarray) -> float:
    """The lower end of the 95% confidence interval of a mean of per-customer recalls."""
    n = per_customer.shape[0]
    spread = float(per_customer.std(ddof=1)) if n > 1 else 0.0
    return float(per_customer.mean()) - CONFIDENCE_Z * spread / math.sqrt(n)


def _self_test(
    index: AnnoyIndex,
    vectors: np.ndarray,
    item_user: np.ndarray,
    settings: BuildSettings,
    search_k: int,
) -> fmt.SelfTest:
    """Record a known answer: the served neighbours of the first indexed customer."""
    item = 0
    k = min(SELF_TEST_K, vectors.shape[0] - 1)
    cands = np.asarray(
        index.get_nns_by_item(item, max(settings.candidates, k + 1), search_k=search_k)
    )
    chosen, sims = rank_candidates(vectors, item_user, vectors[item], cands, k, exclude=item)
    return fmt.SelfTest(
        user_handle=int(item_user[item]),
        neighbors=[int(item_user[i]) for i in chosen],
        similarities=[float(s) for s in sims],
    )


def _inputs(tables: Tables) -> dict[str, dict[str, Any]]:
    return {
        f.name: {
            "present": f.present,
            "sha256": f.sha256,
            "bytes": f.bytes,
            "rows_read": f.rows_read,
            "rows_accepted": f.rows_accepted,
            "rejected": dict(f.rejected),
        }
        for f in tables.files
    }


def _write(
    writer: fmt.ArtifactWriter,
    tables: Tables,
    features: FeatureMatrix,
    emb: Embedding,
) -> tuple[np.ndarray, np.ndarray]:
    users = features.users
    user_item = np.full(users.shape[0], -1, dtype=np.int32)
    user_item[emb.rows] = np.arange(emb.rows.shape[0], dtype=np.int32)
    item_user = users[emb.rows].astype(np.int64)
    s = features.summaries
    writer.save_array("users", users)
    writer.save_array("user_item", user_item)
    writer.save_array("item_user", item_user)
    writer.save_array("embeddings", emb.vectors)
    writer.save_array("components", emb.components)
    writer.save_array("singular_values", emb.singular_values)
    writer.save_array("summary_courses", s.courses_viewed)
    writer.save_array("summary_seconds", s.view_time_seconds)
    writer.save_array("summary_interests", s.interests)
    writer.save_array("summary_assessments", s.assessments)
    writer.save_array("summary_top_tags", s.top_tags)
    writer.save_space(features.space)
    tables.rejects.write_csv(writer.path("rejects"))
    return user_item, item_user


def shows_progress(settings: BuildSettings) -> bool:
    """Progress lines: as asked, else only when standard error is a terminal."""
    return settings.progress if settings.progress is not None else os.isatty(2)


def build(settings: BuildSettings) -> BuildResult:
    """Run the whole build and publish the artifact as the new ``current``."""
    progress = shows_progress(settings)
    problem = fmt.publish_problem(settings.artifacts_dir)
    if problem is not None:
        raise BuildError(problem)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    blas_threads = 1 if settings.deterministic else None
    annoy_jobs = 1 if settings.deterministic else -1
    with threadpool_limits(limits=blas_threads):
        threads = {
            "blas": [
                {"api": i.get("internal_api"), "threads": i.get("num_threads")}
                for i in threadpool_info()
            ],
            "annoy_build_jobs": annoy_jobs,
            "polars": pl.thread_pool_size(),
        }
        t0 = time.perf_counter()
        with ticking("ingest", progress):
            tables = read_tables(settings.data_dir)
        timings["ingest"] = round(time.perf_counter() - t0, 3)

        with ticking("features", progress):
            features = build_features(tables, settings.weights)
        timings["features"] = features.seconds
        # Past this point only the rejects and file reports are needed: free the input rows
        # (gigabytes at a million customers) before the factorisation and the index build.
        tables = replace(
            tables,
            views=tables.views.clear(),
            interests=tables.interests.clear(),
            assessments=tables.assessments.clear(),
        )
        if features.matrix.nnz == 0:
            raise BuildError(
                f"{settings.data_dir}: no customer has comparable activity; nothing to index"
            )

        with ticking(f"embeddings: svds k={settings.dim}", progress):
            emb = embed(features.matrix, settings.dim, settings.seed)
        timings["embeddings"] = emb.seconds
        if emb.vectors.shape[0] < 2:
            raise BuildError(
                f"{settings.data_dir}: only {emb.vectors.shape[0]} customer(s) with comparable "
                "activity; at least 2 are needed to find neighbours"
            )

        with fmt.ArtifactWriter(settings.artifacts_dir) as writer:
            t0 = time.perf_counter()
            # The deterministic Annoy build uses one core: the brute-force truth of the recall
            # sample takes the other (both release the GIL; one BLAS thread either way).
            with ThreadPoolExecutor(max_workers=1) as pool:
                truth_job = pool.submit(
                    recall_truth, emb.vectors, settings.recall_sample, settings.seed
                )
                user_item, item_user = _write(writer, tables, features, emb)
                index = writer.build_index(
                    emb.vectors,
                    settings.n_trees,
                    settings.seed,
                    n_jobs=annoy_jobs,
                    progress=progress,
                )
                timings["index"] = round(time.perf_counter() - t0, 3)
                truth = truth_job.result()
            logger.info(
                "index %s items, %d trees; exact top %d of %s sampled customers alongside (%.1f s)",
                f"{emb.vectors.shape[0]:,}",
                settings.n_trees,
                RECALL_K,
                f"{0 if truth is None else truth.items.size:,}",
                time.perf_counter() - t0,
            )

            t0 = time.perf_counter()
            tuning = tune_search_k(
                index,
                emb.vectors,
                item_user,
                truth,
                candidates=settings.candidates,
                start=settings.base_search_k(),
                tune=settings.search_k == 0,
                target=settings.target_recall,
                progress=progress,
            )
            search_k = tuning.search_k
            self_test = _self_test(index, emb.vectors, item_user, settings, search_k)
            index.unload()
            timings["quality"] = round(time.perf_counter() - t0, 3)
            quality: dict[str, float] = {"recall_sample": float(tuning.sample)}
            final = tuning.chosen
            if final is not None:
                quality.update(
                    recall_at_10_annoy=final.recall_at_10_annoy,
                    recall_at_10_annoy_low=recall_floor(final),
                    recall_at_10_served=final.recall_at_10_served,
                )
                logger.info(
                    "quality search_k %d (%s): recall@10 on %d customers: Annoy %.4f (95%% CI "
                    "from %.4f), served (re-ranked) %.4f (%.1f s)",
                    search_k,
                    "tuned" if settings.search_k == 0 else "as given",
                    tuning.sample,
                    final.recall_at_10_annoy,
                    recall_floor(final),
                    final.recall_at_10_served,
                    timings["quality"],
                )
                if recall_floor(final) < settings.target_recall:
                    logger.warning(
                        "recall@10 of Annoy is %.4f (95%% CI from %.4f), short of %.2f at "
                        "search_k %d: raise --search-k (or --n-trees)",
                        final.recall_at_10_annoy,
                        recall_floor(final),
                        settings.target_recall,
                        search_k,
                    )
            else:
                logger.info(
                    "quality not measured (--recall-sample 0, or %d customers indexed: too few "
                    "for recall@%d): search_k %d",
                    emb.vectors.shape[0],
                    RECALL_K,
                    search_k,
                )

            files = writer.file_entries()
            content = fmt.content_checksum(files)
            now = dt.datetime.now(dt.UTC)
            rejected = {f.name: dict(f.rejected) for f in tables.files if f.present}
            counts = {
                "customers": int(features.users.shape[0]),
                "customers_indexed": int(emb.vectors.shape[0]),
                "customers_no_comparable_activity": int((user_item < 0).sum()),
                "features": features.space.n_features,
                "nonzeros": int(features.matrix.nnz),
                "rows_read": sum(f.rows_read for f in tables.files),
                "rows_rejected": int(tables.rejects.height),
            }
            timings["total"] = round(time.perf_counter() - started, 3)
            manifest = fmt.Manifest(
                schema_version=fmt.SCHEMA_VERSION,
                version=f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{content[:8]}",
                created_at=now.isoformat(timespec="seconds"),
                content_sha256=content,
                metric=fmt.METRIC,
                dim=emb.dim,
                n_items=int(emb.vectors.shape[0]),
                n_users=int(features.users.shape[0]),
                n_features=features.space.n_features,
                n_trees=settings.n_trees,
                search_k=search_k,
                candidates=settings.candidates,
                seed=settings.seed,
                parameters={
                    "dim_requested": settings.dim,
                    "search_k_requested": settings.search_k,
                    "target_recall": settings.target_recall,
                    "weights": settings.weights.model_dump(),
                    "deterministic": settings.deterministic,
                    "recall_sample": settings.recall_sample,
                    "keep_versions": settings.keep_versions,
                },
                inputs=_inputs(tables),
                libraries=_libraries(),
                threads=threads,
                counts=counts,
                timings=timings,
                quality=quality,
                search_k_tuning=list(tuning.steps),
                self_test=self_test,
                files=files,
            )
            path = writer.publish(manifest, settings.keep_versions)
    logger.info(
        "published %s: %s customers indexed, %s with no comparable activity, %s rows rejected "
        "(details in %s) (%.1f s total)",
        path,
        f"{counts['customers_indexed']:,}",
        f"{counts['customers_no_comparable_activity']:,}",
        f"{counts['rows_rejected']:,}",
        fmt.rejects_path(path),
        timings["total"],
    )
    return BuildResult(path=path, manifest=manifest, rejected=rejected)
