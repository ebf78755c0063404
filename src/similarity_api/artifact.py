"""The on-disk artifact format: the one module that knows file names, writes and reads them.

Layout of ``<artifacts_dir>/<version>/`` (schema_version 1)::

    manifest.json          written last; parameters, counts, timings, sha256 of every file below
    index.ann              Annoy index (manifest ``metric``), item i = embeddings row i; mmapped
    users.npy              int64 (n_users,)  every known customer handle, ascending
    user_item.npy          int32 (n_users,)  Annoy item of each customer, -1 = no comparable activity
    item_user.npy          int64 (n_items,)  customer handle of each item
    embeddings.npy         float32 (n_items, dim), rows L2-normalised (exact re-ranking, checks)
    components.npy         float32 (dim, n_features): SVD Vt, to fold a new profile in
    singular_values.npy    float64 (dim,)
    idf.npy                float32 (n_features,)  per-feature scale of the transform
    features.json          feature names and blocks (name, start, stop, weight, log)
    summary_courses.npy    int32 (n_users,)   distinct courses viewed
    summary_seconds.npy    float64 (n_users,) total view seconds
    summary_interests.npy  int32 (n_users,)   distinct interests followed
    summary_assessments.npy int32 (n_users,)  distinct assessment tags
    summary_top_tags.npy   int32 (n_users, 5) feature columns of top course tags, -1 padded
    rejects.csv            every rejected input row: file, line, reason, field, value

``<artifacts_dir>/current`` is a symlink to the live version, replaced atomically. No pickle: npy
files are loaded with ``allow_pickle=False`` and memory-mapped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from annoy import AnnoyIndex
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from similarity_api.errors import ArtifactError
from similarity_api.progress import ticking
from similarity_api.space import Block, FeatureSpace

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: The Annoy metric new builds use. The rows are L2-normalised, so Euclidean distance ranks exactly
#: as cosine does (``|a - b|^2 = 2 - 2 cos``), and Annoy's Euclidean trees split at offset
#: hyperplanes (between two points) where angular ones must pass through the origin: they cut the
#: cone the SVD embeddings live in far better. At 1M customers, recall@10 0.95 needs search_k
#: about 4,000 instead of 32,000, and the trees build in less than half the time
#: (benchmarks/results/recall_tradeoff.md).
METRIC: Final = "euclidean"
#: Metrics an artifact may carry (schema 1 artifacts built before the change are angular).
Metric = Literal["angular", "euclidean"]
CURRENT = "current"
MANIFEST = "manifest.json"
STAGING_PREFIX = ".staging-"

#: key -> file name. Arrays are ``.npy``; the rest are written by their owners through ``path()``.
FILES: dict[str, str] = {
    "index": "index.ann",
    "users": "users.npy",
    "user_item": "user_item.npy",
    "item_user": "item_user.npy",
    "embeddings": "embeddings.npy",
    "components": "components.npy",
    "singular_values": "singular_values.npy",
    "idf": "idf.npy",
    "features": "features.json",
    "summary_courses": "summary_courses.npy",
    "summary_seconds": "summary_seconds.npy",
    "summary_interests": "summary_interests.npy",
    "summary_assessments": "summary_assessments.npy",
    "summary_top_tags": "summary_top_tags.npy",
    "rejects": "rejects.csv",
}
ARRAYS: dict[str, str] = {k: v for k, v in FILES.items() if v.endswith(".npy")}

_HINT = "rebuild it with `python -m similarity_api build --data-dir DIR --artifacts-dir {dir}`"


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sha256: str
    bytes: int


class SelfTest(BaseModel):
    """A known answer recorded at build time; a loaded index must reproduce it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    user_handle: int
    neighbors: list[int]
    similarities: list[float]


class RecallStep(BaseModel):
    """recall@10 against exact cosine measured at one search_k while the build chose it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    search_k: int
    recall_at_10_annoy: float
    recall_at_10_served: float
    recall_at_10_annoy_low: float | None = Field(
        None,
        description="lower end of the 95% confidence interval of recall_at_10_annoy over the "
        "sampled customers (normal approximation); what tuning holds to the target. Absent in "
        "artifacts built before it was recorded",
    )


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int
    version: str
    created_at: str
    content_sha256: str = Field(description="sha256 over every file's sha256: the build checksum")
    metric: Metric
    dim: int
    n_items: int
    n_users: int
    n_features: int
    n_trees: int
    search_k: int
    candidates: int
    seed: int
    parameters: dict[str, Any]
    inputs: dict[str, dict[str, Any]]
    libraries: dict[str, str]
    threads: dict[str, Any]
    counts: dict[str, int]
    timings: dict[str, float]
    quality: dict[str, float]
    search_k_tuning: list[RecallStep] = Field(
        default_factory=list,
        description="recall at each search_k tried, in order; `search_k` is the one chosen",
    )
    self_test: SelfTest
    files: dict[str, FileEntry]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def content_checksum(files: dict[str, FileEntry]) -> str:
    lines = "".join(f"{name} {files[name].sha256}\n" for name in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


# --- writing ------------------------------------------------------------------------------------


class ArtifactWriter:
    """Stages one artifact in a temporary folder, then publishes it atomically.

    Use as a context manager: on an exception the staging folder is removed and nothing changes.
    """

    def __init__(self, artifacts_dir: Path) -> None:
        self.artifacts_dir = artifacts_dir
        artifacts_dir.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=artifacts_dir))

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)

    def path(self, key: str) -> Path:
        return self.staging / FILES[key]

    def save_array(self, key: str, array: np.ndarray) -> None:
        if key not in ARRAYS:
            raise KeyError(f"{key} is not an array of the artifact format")
        np.save(self.path(key), np.ascontiguousarray(array), allow_pickle=False)

    def save_space(self, space: FeatureSpace) -> None:
        self.save_array("idf", space.idf.astype(np.float32))
        doc = {
            "names": list(space.names),
            "blocks": [
                {"name": b.name, "start": b.start, "stop": b.stop, "weight": b.weight, "log": b.log}
                for b in space.blocks
            ],
        }
        self.path("features").write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")))

    def build_index(
        self, vectors: np.ndarray, n_trees: int, seed: int, n_jobs: int, progress: bool = False
    ) -> AnnoyIndex:
        """Build the Annoy index straight to disk and return it loaded (memory-mapped).

        With ``progress``, a bar counts the items added, then a line the seconds spent in Annoy's
        tree build (one C++ call that reports nothing, and the longest step at scale)."""
        index = AnnoyIndex(int(vectors.shape[1]), METRIC)
        index.set_seed(seed)
        index.on_disk_build(str(self.path("index")))
        for item, vector in enumerate(
            tqdm(vectors, desc="index: add items", unit=" items", disable=not progress, leave=False)
        ):
            index.add_item(item, vector)
        with ticking(f"index: build {n_trees} trees", progress):
            index.build(n_trees, n_jobs=n_jobs)
        return index

    def file_entries(self) -> dict[str, FileEntry]:
        missing = [name for name in FILES.values() if not (self.staging / name).is_file()]
        if missing:
            raise ArtifactError(f"artifact incomplete, not written: {', '.join(missing)}")
        return {
            name: FileEntry(
                sha256=sha256_file(self.staging / name), bytes=(self.staging / name).stat().st_size
            )
            for name in sorted(FILES.values())
        }

    def publish(self, manifest: Manifest, keep: int) -> Path:
        """Write the manifest last, move the folder into place, point ``current`` at it, prune."""
        (self.staging / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
        for item in self.staging.iterdir():
            item.chmod(0o644)  # readable by a service running as another user
            _fsync(item)
        self.staging.chmod(0o755)
        _fsync(self.staging)
        final = self.artifacts_dir / manifest.version
        if final.exists():
            raise ArtifactError(f"{final} already exists; not overwriting a published version")
        os.replace(self.staging, final)
        _point_current(self.artifacts_dir, manifest.version)
        prune(self.artifacts_dir, keep)
        return final


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_problem(artifacts_dir: Path) -> str | None:
    """Why a new version could not be published into ``artifacts_dir`` as ``current``, or None.

    Checked before a build starts, so that it fails in a second and not after the work."""
    link = artifacts_dir / CURRENT
    if link.exists() and not link.is_symlink():
        return (
            f"{link} is a {'folder' if link.is_dir() else 'file'}, not the symbolic link a build "
            "publishes as; move it out of the artifacts folder"
        )
    return None


def _point_current(artifacts_dir: Path, version: str) -> None:
    tmp = artifacts_dir / f".{CURRENT}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(version, target_is_directory=True)
    try:
        os.replace(tmp, artifacts_dir / CURRENT)
    except OSError:
        tmp.unlink()
        raise
    _fsync(artifacts_dir)


def versions(artifacts_dir: Path) -> list[str]:
    """Published versions, oldest first (names sort by build time)."""
    if not artifacts_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in artifacts_dir.iterdir()
        if p.is_dir()
        and not p.is_symlink()
        and not p.name.startswith(".")
        and (p / MANIFEST).is_file()
    )


def prune(artifacts_dir: Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions; never the one ``current`` points to."""
    live = current_version(artifacts_dir)
    doomed = [v for v in versions(artifacts_dir)[:-keep] if v != live]
    for version in doomed:
        shutil.rmtree(artifacts_dir / version, ignore_errors=True)
        logger.info("pruned old artifact version %s", version)
    return doomed


def current_version(artifacts_dir: Path) -> str | None:
    link = artifacts_dir / CURRENT
    if not link.is_symlink() and not link.is_dir():
        return None
    return link.resolve().name


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """A verified, loaded artifact. Arrays are read-only memory maps."""

    path: Path
    manifest: Manifest
    index: AnnoyIndex
    users: np.ndarray
    user_item: np.ndarray
    item_user: np.ndarray
    embeddings: np.ndarray
    components: np.ndarray
    space: FeatureSpace
    summary_courses: np.ndarray
    summary_seconds: np.ndarray
    summary_interests: np.ndarray
    summary_assessments: np.ndarray
    summary_top_tags: np.ndarray


def resolve(artifacts_dir: Path) -> Path:
    """The folder ``current`` points to, or an ArtifactError that says what to run."""
    link = artifacts_dir / CURRENT
    if not link.exists():
        raise ArtifactError(
            f"no published artifact: {link} does not exist; " + _HINT.format(dir=artifacts_dir),
            public="no published artifact; " + _HINT.format(dir="ARTIFACTS_DIR"),
        )
    return link.resolve()


def _fail(path: Path, problem: str) -> ArtifactError:
    return ArtifactError(
        f"artifact {path} is unusable: {problem}; " + _HINT.format(dir=path.parent),
        public=f"artifact version {path.name} is unusable: {problem}; "
        + _HINT.format(dir="ARTIFACTS_DIR"),
    )


def unusable(path: Path, problem: str) -> ArtifactError:
    """The error for an artifact in ``path`` that must not be served: what is wrong, what to run."""
    return _fail(path, problem)


def read_manifest(path: Path) -> Manifest:
    file = path / MANIFEST
    if not file.is_file():
        raise _fail(path, f"{MANIFEST} is missing (an unfinished or foreign folder)")
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise _fail(path, f"{MANIFEST} is not valid JSON ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("schema_version") != SCHEMA_VERSION:
        found = raw.get("schema_version") if isinstance(raw, dict) else None
        raise _fail(
            path, f"schema_version {found!r} is not supported (this service reads {SCHEMA_VERSION})"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise _fail(path, f"{MANIFEST} does not match the format: {where}: {error['msg']}") from exc


def _verify_files(path: Path, manifest: Manifest) -> None:
    expected = set(FILES.values())
    if set(manifest.files) != expected:
        raise _fail(path, "manifest lists a different set of files than this format")
    for name, entry in manifest.files.items():
        file = path / name
        if not file.is_file():
            raise _fail(path, f"{name} is missing")
        if file.stat().st_size != entry.bytes:
            raise _fail(
                path, f"{name} has {file.stat().st_size} bytes, manifest says {entry.bytes}"
            )
        if sha256_file(file) != entry.sha256:
            raise _fail(path, f"{name} checksum mismatch (corrupted or modified)")
    if content_checksum(manifest.files) != manifest.content_sha256:
        raise _fail(path, "content_sha256 does not match the file checksums")


def _array(path: Path, key: str, dtype: str, shape: tuple[int | None, ...]) -> np.ndarray:
    name = ARRAYS[key]
    try:
        array: np.ndarray = np.load(path / name, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise _fail(path, f"{name} cannot be read as a numpy array ({exc})") from exc
    if array.dtype != np.dtype(dtype):
        raise _fail(path, f"{name} has dtype {array.dtype}, expected {dtype}")
    if len(array.shape) != len(shape) or any(
        want is not None and got != want for got, want in zip(array.shape, shape, strict=True)
    ):
        raise _fail(path, f"{name} has shape {array.shape}, expected {shape}")
    # A plain ndarray over the same read-only mapping: np.memmap's Python-level __getitem__ costs
    # microseconds per lookup, a lot on a request path that indexes these arrays ~150 times.
    return np.asarray(array)


def _space(path: Path, idf: np.ndarray) -> FeatureSpace:
    try:
        doc = json.loads((path / FILES["features"]).read_text())
        blocks = tuple(Block(**b) for b in doc["blocks"])
        names = tuple(str(n) for n in doc["names"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _fail(path, f"{FILES['features']} is malformed ({exc})") from exc
    return FeatureSpace(names=names, blocks=blocks, idf=idf)


def load(path: Path) -> Artifact:
    """Open and verify the artifact in ``path``. Any problem is an ArtifactError saying what to run."""
    if not path.is_dir():
        raise _fail(path, "the folder does not exist")
    manifest = read_manifest(path)
    _verify_files(path, manifest)
    n_users, n_items, dim, n_feat = (
        manifest.n_users,
        manifest.n_items,
        manifest.dim,
        manifest.n_features,
    )
    users = _array(path, "users", "int64", (n_users,))
    user_item = _array(path, "user_item", "int32", (n_users,))
    item_user = _array(path, "item_user", "int64", (n_items,))
    embeddings = _array(path, "embeddings", "float32", (n_items, dim))
    components = _array(path, "components", "float32", (dim, n_feat))
    idf = _array(path, "idf", "float32", (n_feat,))
    space = _space(path, np.asarray(idf))
    if space.n_features != n_feat:
        raise _fail(path, f"features.json has {space.n_features} features, manifest says {n_feat}")
    index = AnnoyIndex(dim, manifest.metric)
    try:
        index.load(str(path / FILES["index"]), prefault=False)
    except OSError as exc:
        raise _fail(path, f"index.ann cannot be loaded ({exc})") from exc
    if index.get_n_items() != n_items:
        index.unload()
        raise _fail(path, f"index.ann has {index.get_n_items()} items, manifest says {n_items}")
    return Artifact(
        path=path,
        manifest=manifest,
        index=index,
        users=users,
        user_item=user_item,
        item_user=item_user,
        embeddings=embeddings,
        components=components,
        space=space,
        summary_courses=_array(path, "summary_courses", "int32", (n_users,)),
        summary_seconds=_array(path, "summary_seconds", "float64", (n_users,)),
        summary_interests=_array(path, "summary_interests", "int32", (n_users,)),
        summary_assessments=_array(path, "summary_assessments", "int32", (n_users,)),
        summary_top_tags=_array(path, "summary_top_tags", "int32", (n_users, None)),
    )


def rejects_path(path: Path) -> Path:
    """The rejects report inside an artifact folder."""
    return path / FILES["rejects"]
