"""A small dirty dataset, and the ways a published artifact gets damaged, for the hardening tests.

Every damage works on a COPY of a tiny artifact (never the session's real one). ``fix_up`` rewrites
the manifest's file entries and content_sha256 after a change, so that only the structural checks
(shapes, item counts, the self-test) stand between the damage and a served index.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from annoy import AnnoyIndex

from similarity_api import artifact

from .conftest import write_dataset

VIEW_DAY = "2017-01-01"
FOLLOWED = "2017-01-01 00:00:00"
ACTIVE = range(1, 21)  # customers 1..20: three course views each
INTEREST_ONLY = 30  # only in user_interests.csv
ASSESSMENT_ONLY = 31  # only in user_assessment_scores.csv
ALL_REJECTED = 32  # every row of theirs is rejected
ZERO_SECONDS = 33  # known, but their only view lasted 0 seconds
COURSE_TAGS = [
    ("c0", "python"),
    ("c1", "java"),
    ("c2", "ml"),
    ("c3", "RÉSEAU"),  # lower-cased on the way in
    ("c4", "日本語"),
    ("c4", "🐍"),
    ("c5", " C# "),  # stripped and lower-cased
]


def tiny_dataset(data_dir: Path) -> Path:
    """20 active customers plus one of each dirty kind. Customer u views courses u..u+2 (mod 6)
    for 100*(i+1)+u seconds, so customer 1's tags by time are réseau (c3), ml (c2), java (c1)."""
    views: list[list[Any]] = [
        [u, VIEW_DAY, f"c{(u + i) % 6}", 1, "Beginner", 100 * (i + 1) + u]
        for u in ACTIVE
        for i in range(3)
    ]
    views += [
        [ALL_REJECTED, "01/02/2017", "c1", 1, "Beginner", 60],  # bad_date
        [ALL_REJECTED, VIEW_DAY, "no-such-course", 1, "Beginner", 60],  # unknown_course
        [ALL_REJECTED, VIEW_DAY, "c1", 1, "Beginner", -1],  # negative_view_time
        [ZERO_SECONDS, VIEW_DAY, "c1", 1, "Beginner", 0],
    ]
    return write_dataset(
        data_dir,
        views=views,
        tags=[list(t) for t in COURSE_TAGS],
        interests=[[1, "python", FOLLOWED], [INTEREST_ONLY, "python", FOLLOWED]],
        assessments=[
            [ASSESSMENT_ONLY, "java", FOLLOWED, 200],
            [ALL_REJECTED, "java", FOLLOWED, 301],  # score_out_of_range
        ],
    )


# --- publishing copies -------------------------------------------------------------------------


def point_current(artifacts_dir: Path, name: str) -> None:
    tmp = artifacts_dir / ".current.test"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(name, target_is_directory=True)
    os.replace(tmp, artifacts_dir / artifact.CURRENT)


def publish_copy(version_dir: Path, artifacts_dir: Path, name: str) -> Path:
    """Copy a published version folder into ``artifacts_dir`` as ``name`` and make it current."""
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    target = Path(shutil.copytree(version_dir, artifacts_dir / name))
    point_current(artifacts_dir, name)
    return target


# --- damage --------------------------------------------------------------------------------------


def _manifest(version: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((version / artifact.MANIFEST).read_text())
    return doc


def _write_manifest(version: Path, doc: dict[str, Any]) -> None:
    (version / artifact.MANIFEST).write_text(json.dumps(doc, indent=2))


def fix_up(version: Path, *names: str) -> None:
    """Record the current bytes of ``names`` in the manifest, so no checksum catches the change."""
    doc = _manifest(version)
    for name in names:
        path = version / name
        doc["files"][name] = {"sha256": artifact.sha256_file(path), "bytes": path.stat().st_size}
    entries = {k: artifact.FileEntry(**v) for k, v in doc["files"].items()}
    doc["content_sha256"] = artifact.content_checksum(entries)
    _write_manifest(version, doc)


def edit_manifest(**changes: Any) -> Callable[[Path], None]:
    def damage(version: Path) -> None:
        doc = _manifest(version)
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(doc.get(key), dict):
                doc[key] = {**doc[key], **value}
            else:
                doc[key] = value
        _write_manifest(version, doc)

    return damage


def _truncate_index(version: Path) -> None:
    path = version / "index.ann"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage_index(version: Path) -> None:
    path = version / "index.ann"
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def _garbage_index_fixed(version: Path) -> None:
    _garbage_index(version)
    fix_up(version, "index.ann")


def _empty_index_fixed(version: Path) -> None:
    (version / "index.ann").write_bytes(b"")
    fix_up(version, "index.ann")


def _index_of_other_dim_fixed(version: Path) -> None:
    doc = _manifest(version)
    dim, n_items = doc["dim"] + 3, doc["n_items"]
    other = AnnoyIndex(dim, artifact.METRIC)
    rng = np.random.default_rng(1)
    for item in range(n_items):
        other.add_item(item, rng.normal(size=dim).tolist())
    other.build(5)
    other.save(str(version / "index.ann"))
    other.unload()
    fix_up(version, "index.ann")


def rebuild_index(version: Path, metric: artifact.Metric, n_trees: int = 5) -> None:
    """Replace index.ann by one over the same embeddings with ``metric``, and fix the manifest up."""
    vectors = np.load(version / "embeddings.npy")
    other = AnnoyIndex(vectors.shape[1], metric)
    other.set_seed(0)
    for item, vector in enumerate(vectors):
        other.add_item(item, vector)
    other.build(n_trees, n_jobs=1)
    other.save(str(version / "index.ann"))
    other.unload()
    fix_up(version, "index.ann")


def _angular_index_fixed(version: Path) -> None:
    rebuild_index(version, "angular")


def _flip_byte(name: str) -> Callable[[Path], None]:
    def damage(version: Path) -> None:
        path = version / name
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))

    return damage


def _append_byte(name: str) -> Callable[[Path], None]:
    def damage(version: Path) -> None:
        with (version / name).open("ab") as fh:
            fh.write(b"\0")

    return damage


def _delete(name: str) -> Callable[[Path], None]:
    def damage(version: Path) -> None:
        (version / name).unlink()

    return damage


def _manifest_not_json(version: Path) -> None:
    path = version / artifact.MANIFEST
    path.write_text(path.read_text()[:100])


def _manifest_missing_field(version: Path) -> None:
    doc = _manifest(version)
    del doc["n_items"]
    _write_manifest(version, doc)


def _embeddings_of_other_dim_fixed(version: Path) -> None:
    emb = np.load(version / "embeddings.npy")
    np.save(version / "embeddings.npy", np.ascontiguousarray(emb[:, :-1]), allow_pickle=False)
    fix_up(version, "embeddings.npy")


def _embeddings_reversed_fixed(version: Path) -> None:
    emb = np.load(version / "embeddings.npy")
    np.save(version / "embeddings.npy", np.ascontiguousarray(emb[::-1]), allow_pickle=False)
    fix_up(version, "embeddings.npy")


def _pickled_users_fixed(version: Path) -> None:
    np.save(version / "users.npy", np.array([{"user": 1}], dtype=object), allow_pickle=True)
    fix_up(version, "users.npy")


def _features_malformed_fixed(version: Path) -> None:
    (version / "features.json").write_text('{"names": 5}')
    fix_up(version, "features.json")


def _self_test_customer_unknown(version: Path) -> None:
    doc = _manifest(version)
    doc["self_test"]["user_handle"] = 999_999
    _write_manifest(version, doc)


def _self_test_customer_inactive(version: Path) -> None:
    doc = _manifest(version)
    doc["self_test"]["user_handle"] = ZERO_SECONDS
    _write_manifest(version, doc)


def _self_test_short_similarities(version: Path) -> None:
    doc = _manifest(version)
    doc["self_test"]["similarities"] = doc["self_test"]["similarities"][:2]
    _write_manifest(version, doc)


#: id -> (damage, a fragment the refusal must contain). All are refused at load time.
DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "index.ann truncated": (_truncate_index, "index.ann has "),
    "index.ann garbage, same size": (_garbage_index, "index.ann checksum mismatch"),
    "index.ann garbage, manifest fixed up": (_garbage_index_fixed, "index.ann has 0 items"),
    "index.ann empty, manifest fixed up": (_empty_index_fixed, "index.ann cannot be loaded"),
    "index.ann of another dim, manifest fixed up": (
        _index_of_other_dim_fixed,
        "index.ann ",  # "cannot be loaded" or "has 0 items", by the file size
    ),
    "users.npy missing": (_delete("users.npy"), "users.npy is missing"),
    "manifest.json missing": (_delete(artifact.MANIFEST), "manifest.json is missing"),
    "manifest.json not JSON": (_manifest_not_json, "manifest.json is not valid JSON"),
    "manifest.json lacks a field": (
        _manifest_missing_field,
        "manifest.json does not match the format: n_items: Field required",
    ),
    "manifest metric unknown": (
        edit_manifest(metric="cosine"),
        "manifest.json does not match the format: metric: Input should be 'angular' or 'euclidean'",
    ),
    "index.ann angular, manifest says euclidean, fixed up": (
        _angular_index_fixed,
        "index.ann cannot be loaded (Index size is not a multiple of vector size. Ensure you "
        "are opening using the same metric",
    ),
    "schema_version 2": (edit_manifest(schema_version=2), "schema_version 2 is not supported"),
    "users.npy checksum mismatch": (_flip_byte("users.npy"), "users.npy checksum mismatch"),
    "summary_seconds.npy size mismatch": (
        _append_byte("summary_seconds.npy"),
        "summary_seconds.npy has ",
    ),
    "content_sha256 mismatch": (
        edit_manifest(content_sha256="0" * 64),
        "content_sha256 does not match",
    ),
    "manifest dim disagrees with embeddings.npy": (
        lambda v: edit_manifest(dim=_manifest(v)["dim"] + 1)(v),
        "embeddings.npy has shape",
    ),
    "embeddings.npy of another dim, manifest fixed up": (
        _embeddings_of_other_dim_fixed,
        "embeddings.npy has shape",
    ),
    "embeddings.npy rows reversed, manifest fixed up": (
        _embeddings_reversed_fixed,
        "failed its self-test",
    ),
    "users.npy holds pickled objects, manifest fixed up": (
        _pickled_users_fixed,
        "users.npy cannot be read as a numpy array",
    ),
    "features.json malformed, manifest fixed up": (
        _features_malformed_fixed,
        "features.json is malformed",
    ),
    "self_test names an unknown customer": (_self_test_customer_unknown, "failed its self-test"),
    "self_test names an inactive customer": (_self_test_customer_inactive, "failed its self-test"),
    "self_test similarities cut short": (_self_test_short_similarities, "failed its self-test"),
}
