"""Settings: the only code that reads the environment.

Entry points build one of these classes (from command-line values, then ``SIMILARITY_*`` environment
variables, then defaults) and pass it down; nothing else looks at ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Annoy takes search_k as a C int.
ANNOY_MAX_SEARCH_K = 2**31 - 1


class BlockWeights(BaseSettings):
    """Relative weight of each signal block in the customer x feature matrix."""

    model_config = SettingsConfigDict(env_prefix="SIMILARITY_WEIGHT_", extra="forbid", frozen=True)

    course: float = Field(1.0, ge=0, description="view time per course")
    tag: float = Field(0.5, ge=0, description="view time per course tag")
    interest: float = Field(0.5, ge=0, description="followed interests")
    assessment: float = Field(0.3, ge=0, description="assessment scores")


class BuildSettings(BaseSettings):
    """Everything the offline build needs. Environment prefix ``SIMILARITY_BUILD_``."""

    model_config = SettingsConfigDict(env_prefix="SIMILARITY_BUILD_", extra="forbid", frozen=True)

    data_dir: Path = Field(description="folder with the four CSV files")
    artifacts_dir: Path = Field(Path("artifacts"), description="where versions are published")
    dim: int = Field(64, ge=2, le=1024, description="embedding dimension (svds k)")
    n_trees: int = Field(20, ge=1, le=1000, description="Annoy trees")
    search_k: int = Field(
        0,
        ge=0,
        le=ANNOY_MAX_SEARCH_K,
        description="Annoy search_k per query; 0 = tuned: the least found, from n_trees * "
        "candidates (Annoy's own default) up in sqrt(2) steps and then bisected, whose measured "
        "recall@10 reaches target_recall with 95% confidence (every step is recorded)",
    )
    target_recall: float = Field(
        0.95,
        gt=0,
        le=1,
        description="recall@10 of Annoy against exact search that the tuned search_k must reach "
        "(the lower end of its 95% confidence interval over the sampled customers)",
    )
    candidates: int = Field(
        100, ge=1, le=10_000, description="Annoy candidates fetched before exact re-ranking"
    )
    seed: int = Field(42, ge=0, le=2**31 - 1, description="seed for svds and Annoy")
    weights: BlockWeights = Field(default_factory=BlockWeights)
    keep_versions: int = Field(3, ge=1, description="published versions to keep (current included)")
    deterministic: bool = Field(
        True, description="single-threaded Annoy build so the index file is byte-identical"
    )
    recall_sample: int = Field(1000, ge=0, description="customers sampled to measure recall@10")
    progress: bool | None = Field(None, description="progress bars; default: only on a terminal")

    def base_search_k(self) -> int:
        """The explicit search_k, or where tuning starts."""
        return self.search_k or self.n_trees * self.candidates


class ServeSettings(BaseSettings):
    """Everything the HTTP service needs. Environment prefix ``SIMILARITY_``."""

    model_config = SettingsConfigDict(env_prefix="SIMILARITY_", extra="ignore", frozen=True)

    artifacts_dir: Path = Field(Path("artifacts"), description="folder holding `current`")
    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8000, ge=0, le=65535, description="bind port")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes")
    admin_token: SecretStr | None = Field(
        None, description="bearer token for POST /admin/reload; unset = endpoint disabled (404)"
    )
    max_body_bytes: int = Field(
        64 * 1024, ge=1024, description="requests with a larger body get 413"
    )
    max_header_bytes: int = Field(
        16 * 1024,
        ge=1024,
        description="requests whose request line and headers are larger get 431 (applied by "
        "`python -m similarity_api serve`, not by a bare uvicorn)",
    )
    candidates: int | None = Field(
        None, ge=1, le=10_000, description="override the artifact's Annoy candidate count"
    )
    search_k: int | None = Field(
        None, ge=1, le=ANNOY_MAX_SEARCH_K, description="override the artifact's Annoy search_k"
    )
    watch_interval: float = Field(
        5.0,
        ge=0,
        description="seconds between checks of `current` for a newly published version "
        "(every worker reloads by itself); 0 = only POST /admin/reload",
    )
    wait_for_index: bool = Field(
        False,
        description="start without an index and answer 503 until one is published "
        "(default: refuse to start)",
    )
    blas_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="BLAS threads per worker; queries are small, so 1 avoids thread contention",
    )
    lookup_threads: int = Field(
        2,
        ge=1,
        le=1024,
        description="threads per worker that run lookups off the event loop: Annoy's search "
        "releases the GIL, the ranking around it holds it, so more threads only queue for it. "
        "A /predict/batch holds one for its whole run; a reload uses a thread of its own",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")
    prometheus_multiproc_dir: Path | None = Field(
        None,
        validation_alias="PROMETHEUS_MULTIPROC_DIR",
        description="prometheus_client's multiprocess folder: set, /metrics reports totals over "
        "every worker (`serve --workers N` sets it up by itself)",
    )
