"""``python -m similarity_api build``: command-line front of the build pipeline.

Also the checks the other commands share: a settings error as one line naming the option and its
environment variable (:func:`validation_message`), and a folder that must be writable
(:func:`directory_problem`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsError

from similarity_api.errors import SimilarityError
from similarity_api.settings import BlockWeights, BuildSettings
from similarity_api.space import BLOCKS

logger = logging.getLogger(__name__)

#: BuildSettings field -> its command-line option (``weights`` has one option per block).
BUILD_OPTIONS: dict[str, str] = {
    name: "--" + name.replace("_", "-") for name in BuildSettings.model_fields if name != "weights"
} | {"keep_versions": "--keep", "deterministic": "--fast"}
WEIGHT_OPTIONS: dict[str, str] = {block: f"--weight-{block}" for block in BLOCKS}

#: Pydantic error types of a number outside its bounds (what NaN fails, whatever the bound).
_BOUND_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


class OptionError(ValueError):
    """A setting is unusable; the message names its option and environment variable."""


def environment_variable(model: type[BaseSettings], name: str) -> str:
    """The environment variable that sets field ``name`` of ``model``."""
    alias = model.model_fields[name].validation_alias
    if isinstance(alias, str):
        return alias.upper()
    return f"{model.model_config.get('env_prefix', '')}{name}".upper()


def setting_name(model: type[BaseSettings], name: str, options: Mapping[str, str]) -> str:
    """How a user sets field ``name``: ``--option (ENV_VAR)``, or ``ENV_VAR`` if it has no option."""
    variable = environment_variable(model, name)
    return f"{options[name]} ({variable})" if name in options else variable


def _field_of(model: type[BaseSettings], error: ErrorDetails) -> str | None:
    """The field an error is about (by name or alias), or None if it is about no one field."""
    if not error["loc"]:
        return None
    where = error["loc"][0]
    for name, info in model.model_fields.items():
        if where in (name, info.validation_alias):
            return name
    return None


def _is_number(value: object) -> bool:
    """Whether ``value`` (a number or its text) is a finite number; text that is no number is."""
    if not isinstance(value, int | float | str):
        return True
    try:
        return math.isfinite(float(value))
    except ValueError:
        return True


def validation_message(
    exc: ValidationError, model: type[BaseSettings], options: Mapping[str, str]
) -> str:
    """The first error of ``exc`` as one line naming the option and environment variable."""
    error = exc.errors()[0]
    name = _field_of(model, error)
    if name is None:
        return f"{'.'.join(map(str, error['loc'])) or 'settings'}: {error['msg']}"
    where = setting_name(model, name, options)
    if error["type"] == "missing":
        return f"{where} is required"
    if error["type"] in _BOUND_ERRORS and not _is_number(error["input"]):
        return f"{where}: must be a finite number, got {error['input']}"
    return f"{where}: {error['msg']}"


def directory_problem(path: Path, what: str) -> str | None:
    """Why files cannot be written in the folder ``path``, or None: it exists and is writable.

    Creates the folder (and its parents) if it is missing. ``what`` names it in the message.
    """
    try:
        if path.exists() and not path.is_dir():
            return f"{path}: {what} is not a directory"
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{path}: cannot create the {what}: {exc.strerror}"
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        return f"{path}: {what} is not writable: {exc.strerror}"
    return None


def _default(name: str, model: type[BlockWeights] | type[BuildSettings] = BuildSettings) -> Any:
    """The settings model's default, so that --help can never drift from what the build uses."""
    return model.model_fields[name].default


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="similarity_api build",
        description=(
            "Build a versioned similarity index from activity logs and publish it as "
            "ARTIFACTS_DIR/current. Every option can also be set as an environment variable "
            "SIMILARITY_BUILD_<OPTION> (weights: SIMILARITY_WEIGHT_<BLOCK>); the command line wins."
        ),
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="folder with user_course_views.csv and course_tags.csv (required), "
        "user_interests.csv and user_assessment_scores.csv (optional) [required]",
    )
    p.add_argument(
        "--artifacts-dir",
        type=Path,
        help=f"where versions are published [{_default('artifacts_dir')}]",
    )
    p.add_argument(
        "--dim",
        type=int,
        help=f"embedding dimension (svds k; clamped to what the data allows) [{_default('dim')}]",
    )
    p.add_argument(
        "--n-trees",
        type=int,
        help=f"Annoy trees: more = better recall, bigger index [{_default('n_trees')}]",
    )
    p.add_argument(
        "--search-k",
        type=int,
        help="Annoy search_k per query; 0 = tuned: the least found (from n_trees * candidates "
        "up in sqrt(2) steps, then bisected) whose recall@10 on the sample reaches --target-recall "
        "with 95%% confidence "
        f"[{_default('search_k')}]",
    )
    p.add_argument(
        "--target-recall",
        type=float,
        help="recall@10 of Annoy against exact search that the tuned search_k must reach: the "
        "lower end of its 95%% confidence interval over the sampled customers "
        f"[{_default('target_recall')}]",
    )
    p.add_argument(
        "--candidates",
        type=int,
        help=f"Annoy candidates exactly re-ranked per query [{_default('candidates')}]",
    )
    p.add_argument("--seed", type=int, help=f"seed for svds and Annoy [{_default('seed')}]")
    for block in BLOCKS:
        field = BlockWeights.model_fields[block]
        p.add_argument(
            f"--weight-{block}",
            type=float,
            help=f"weight of the {field.description} block [{field.default}]",
        )
    p.add_argument(
        "--keep",
        type=int,
        dest="keep_versions",
        help=f"versions to keep, current included [{_default('keep_versions')}]",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="multi-threaded Annoy and BLAS: faster, but the index file is no longer "
        "byte-identical between builds [off]",
    )
    p.add_argument(
        "--recall-sample",
        type=int,
        help=f"customers sampled to measure recall@10 (0 = skip) [{_default('recall_sample')}]",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars [only on a terminal]",
    )
    p.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="[info]"
    )
    return p


def settings_from_args(args: argparse.Namespace) -> BuildSettings:
    """The build settings: command line, then environment variables, then defaults.

    Raises OptionError naming the option and environment variable of the first unusable value.
    """
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
            "target_recall",
            "progress",
        )
        if getattr(args, key) is not None
    }
    weights = {
        block: getattr(args, f"weight_{block}")
        for block in BLOCKS
        if getattr(args, f"weight_{block}") is not None
    }
    values["weights"] = _weights(weights)
    if args.fast:
        values["deterministic"] = False
    try:
        return BuildSettings(**values)
    except ValidationError as exc:
        raise OptionError(validation_message(exc, BuildSettings, BUILD_OPTIONS)) from exc
    except SettingsError as exc:  # an environment value that is not even JSON
        raise OptionError(str(exc)) from exc


def _weights(given: dict[str, Any]) -> BlockWeights:
    """The block weights, each finite and >= 0 (the model itself lets infinity through)."""
    try:
        weights = BlockWeights(**given)
    except ValidationError as exc:
        raise OptionError(validation_message(exc, BlockWeights, WEIGHT_OPTIONS)) from exc
    for block in BLOCKS:
        value = getattr(weights, block)
        if not math.isfinite(value):
            where = setting_name(BlockWeights, block, WEIGHT_OPTIONS)
            raise OptionError(f"{where}: must be a finite number, got {value}")
    return weights


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except OptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Before the build, not at publish time minutes later.
    problem = directory_problem(settings.artifacts_dir, "artifacts directory")
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=args.log_level.upper(), format="%(message)s", stream=sys.stderr, force=True
    )
    from tqdm.contrib.logging import logging_redirect_tqdm

    from similarity_api.build.pipeline import build, shows_progress

    # With progress lines on the terminal, log lines go through tqdm, which clears the line first.
    redirect = logging_redirect_tqdm() if shows_progress(settings) else contextlib.nullcontext()
    try:
        with redirect:
            build(settings)
    except SimilarityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
