"""The types of pair mining: the mined table's schema, :class:`MiningResult` and
:class:`SpaceNeighbours` (one space's kNN lists). Re-exported by :mod:`megapairs.mining`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

SCHEMA = pa.schema([
    ("query", pa.int64()),
    ("target", pa.int64()),
    ("spaces", pa.list_(pa.string())),
    ("scores", pa.list_(pa.float32())),
    ("hard_negatives", pa.list_(pa.int64())),
])


@dataclass
class MiningResult:
    """What :func:`~megapairs.mining.mine_pairs` and :func:`~megapairs.mining.select_pairs`
    return.

    Attributes
    ----------
    table : pyarrow.Table
        One row per (query, target) pair, columns ``query`` int64, ``target`` int64,
        ``spaces`` list<string>, ``scores`` list<float32> (aligned with ``spaces``) and
        ``hard_negatives`` list<int64>. Rows are sorted by query, then in the order the
        targets were chosen. The schema metadata key ``b"megapairs.mining"`` holds the
        mining settings as JSON.
    stats : dict
        Counts and rates, see :func:`~megapairs.mining.mine_pairs`.
    """

    table: pa.Table
    stats: dict = field(default_factory=dict)


@dataclass(eq=False)
class SpaceNeighbours:
    """The kNN results of one similarity space: what :func:`~megapairs.mining.select_pairs`
    works from.

    Row i belongs to query image i; ids are row indices of the same M images, -1 padding.
    :func:`~megapairs.mining.space_neighbours` computes one from embeddings; a pipeline can
    store the three arrays (e.g. ``np.savez``) and rebuild the object to run the selection
    alone.

    Attributes
    ----------
    band_scores : (M, k_band) float array
        Similarity of each band hit (anything at padded positions).
    band_ids : (M, k_band) int array
        Per query, its band hits (the pair candidates) in rank order, best first, then -1
        padding: ``knn.band(E, E, lo, hi, k, exclude_self=True)[1]``. A row never holds its
        own query.
    retrieved_ids : (M, k_retrieved) int array
        Per query, its nearest images whatever their score (-1 padding allowed):
        ``knn.search(E, E, k, exclude_self=True)[1]``. With the band hits of every space
        they form the pool hard negatives are drawn from.
    band : (lo, hi), optional
        The band the hits were found with; only recorded in the table metadata.
    """

    band_scores: np.ndarray
    band_ids: np.ndarray
    retrieved_ids: np.ndarray
    band: tuple[float, float] | None = None
