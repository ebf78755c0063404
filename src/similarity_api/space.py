"""The feature space shared by build and service: vocabulary, blocks and the row transform.

Pure numpy, so the service can fold a described profile into the trained space without the build
stack. ``build.features`` produces a FeatureSpace; ``artifact`` stores and loads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

BLOCKS = ("course", "tag", "interest", "assessment")
LOG_BLOCKS = frozenset({"course", "tag"})


@dataclass(frozen=True)
class Block:
    """A contiguous run of feature columns sharing one signal and one transform."""

    name: str
    start: int
    stop: int
    weight: float
    log: bool


@dataclass(frozen=True)
class FeatureSpace:
    """The vocabulary and the per-feature scale needed to place any profile in the same space."""

    names: tuple[str, ...]  # feature labels without the block prefix, e.g. "python"
    blocks: tuple[Block, ...]
    idf: np.ndarray  # float32, one per feature

    @property
    def n_features(self) -> int:
        return len(self.names)

    def block(self, name: str) -> Block:
        for block in self.blocks:
            if block.name == name:
                return block
        raise KeyError(name)

    def kind_of(self, column: int) -> str:
        for block in self.blocks:
            if block.start <= column < block.stop:
                return block.name
        raise IndexError(column)

    def columns(self, block_name: str) -> dict[str, int]:
        """Label -> column for one block (built on demand; callers cache it)."""
        block = self.block(block_name)
        return {self.names[c]: c for c in range(block.start, block.stop)}


def transform_profile(space: FeatureSpace, raw: Mapping[str, Mapping[int, float]]) -> np.ndarray:
    """Apply the training transform to one customer's raw values.

    ``raw`` maps block name -> {column: raw value} (seconds for course/tag, 1.0 for an interest,
    score/300 for an assessment). Returns a dense float32 row (len == n_features), L2-normalised,
    or all zeros when nothing is usable. ``build.features`` applies exactly this, vectorised.
    """
    row = np.zeros(space.n_features, dtype=np.float64)
    for block in space.blocks:
        values = raw.get(block.name, {})
        if not values:
            continue
        cols = np.fromiter(values.keys(), dtype=np.int64)
        vals = np.fromiter(values.values(), dtype=np.float64)
        if block.log:
            vals = np.log1p(vals)
        vals = vals * space.idf[cols]
        keep = vals > 0
        cols, vals = cols[keep], vals[keep]
        norm = float(np.sqrt(np.sum(vals * vals)))
        if norm > 0:
            row[cols] = vals / norm * block.weight
    total = float(np.linalg.norm(row))
    if total > 0:
        row /= total
    return row.astype(np.float32)
