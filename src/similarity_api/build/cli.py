"""``python -m similarity_api build``: command-line front of the build pipeline."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from similarity_api.errors import SimilarityError
from similarity_api.settings import BlockWeights, BuildSettings

logger = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="similarity_api build",
        description=(
            "Build a versioned similarity index from activity logs and publish it as "
            "ARTIFACTS_DIR/current. Every option can also be set as an environment variable "
            "SIMILARITY_BUILD_<OPTION> (weights: SIMILARITY_WEIGHT_<BLOCK>); the command line wins."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="folder with user_course_views.csv and course_tags.csv (required), user_interests.csv and user_assessment_scores.csv (optional)",
    )
    p.add_argument(
        "--artifacts-dir", type=Path, help="where versions are written (default: artifacts)"
    )
    p.add_argument(
        "--dim", type=int, help="embedding dimension (svds k; clamped to what the data allows) [64]"
    )
    p.add_argument(
        "--n-trees", type=int, help="Annoy trees: more = better recall, bigger index [50]"
    )
    p.add_argument(
        "--search-k", type=int, help="Annoy search_k per query; 0 = n_trees * candidates * 4 [0]"
    )
    p.add_argument(
        "--candidates", type=int, help="Annoy candidates exactly re-ranked per query [100]"
    )
    p.add_argument("--seed", type=int, help="seed for svds and Annoy [42]")
    for block, text in (
        ("course", "view time per course"),
        ("tag", "view time per course tag"),
        ("interest", "followed interests"),
        ("assessment", "assessment scores"),
    ):
        p.add_argument(f"--weight-{block}", type=float, help=f"weight of the {text} block")
    p.add_argument(
        "--keep", type=int, dest="keep_versions", help="versions to keep, current included [3]"
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="multi-threaded Annoy and BLAS: faster, but the index file is no longer byte-identical between builds",
    )
    p.add_argument(
        "--recall-sample", type=int, help="customers sampled to measure recall@10 (0 = skip) [1000]"
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: only on a terminal)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def settings_from_args(args: argparse.Namespace) -> BuildSettings:
    values: dict[str, Any] = {
        key: getattr(args, key)
        for key in (
            "data_dir",
            "artifacts_dir",
            "dim",
            "n_trees",
            "search_k",
            "candidates",
            "seed",
            "keep_versions",
            "recall_sample",
            "progress",
        )
        if getattr(args, key) is not None
    }
    weights = {
        block: getattr(args, f"weight_{block}")
        for block in ("course", "tag", "interest", "assessment")
        if getattr(args, f"weight_{block}") is not None
    }
    values["weights"] = BlockWeights(**weights)
    if args.fast:
        values["deterministic"] = False
    return BuildSettings(**values)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(message)s", stream=sys.stderr, force=True
    )
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        print(f"error: {where}: {first['msg']}", file=sys.stderr)
        return 2
    from similarity_api.build.pipeline import build

    try:
        build(settings)
    except SimilarityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
