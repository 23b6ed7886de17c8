"""A sync's index: the previous version's faiss index grown by the new chunks' vectors, or a fresh build.

Chunks of unchanged documents keep their vector ids; new chunks get ids after the previous index's last one, in
chunk-table order, so the same previous version and the same new documents always give the same index. Chunks of
deleted or changed documents leave tombstones (engine.tombstones) that searches skip; once tombstones would pass
REBUILD_TOMBSTONE_FRACTION of the index, or the index's shape changed, the sync builds afresh and numbers the
rows 0..n-1. The previous version's index file is read into a new object: a reader holding that version never
sees the new vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from kubeforge_workloads.index import engine

REBUILD_TOMBSTONE_FRACTION = 0.1
"""HNSW walks tombstones like live nodes and only filters them out of the answer: a few cost little, but a graph
that is mostly tombstones wastes its search budget on them and loses recall, so past this share it is rebuilt."""


@dataclass
class IndexUpdate:
    index: object
    vector_ids: np.ndarray
    """Per chunk-table row, its vector's id in `index`."""
    tombstones: np.ndarray
    mode: str
    """incremental or rebuild"""
    reason: str


def index_shape(index_spec: dict) -> dict:
    """What decides the graph (efSearch and minRecall only change how it is searched)."""
    hnsw = index_spec.get("hnsw") or {}
    return {"metric": index_spec.get("metric"), "type": index_spec.get("type"), "m": hnsw.get("m"),
            "efConstruction": hnsw.get("efConstruction")}


def update_index(stored: np.ndarray, reused_ids: np.ndarray, previous_index, metric: str, index_type: str,
                 m: int, ef_construction: int, no_previous_reason: Optional[str] = None) -> IndexUpdate:
    """stored: the chunk table's vectors (engine.prepare()d), row by row; reused_ids: per row, the vector id the
    chunk had in the previous index, or -1 for a chunk embedded by this sync. previous_index: that index (None:
    build afresh, because of `no_previous_reason`)."""
    reused_ids = np.asarray(reused_ids, dtype=np.int64)
    new_rows = np.flatnonzero(reused_ids < 0)
    reason = no_previous_reason or "no previous version"
    if previous_index is not None:
        total = previous_index.ntotal + len(new_rows)
        dead = total - len(reused_ids)
        kept = reused_ids[reused_ids >= 0]
        if engine.misnumbered(kept, previous_index.ntotal):
            raise ValueError("reused chunks name vector ids the previous index does not hold once each")
        if dead <= REBUILD_TOMBSTONE_FRACTION * total:
            ids = reused_ids.copy()
            ids[new_rows] = engine.add(previous_index, stored[new_rows])
            return IndexUpdate(previous_index, ids, engine.tombstones(total, ids), "incremental",
                               f"{len(new_rows)} vectors added, {dead} tombstones of {total}")
        reason = f"{dead} of {total} vectors would be tombstones (over {REBUILD_TOMBSTONE_FRACTION:.0%})"
    index = engine.build(stored, metric, index_type, m, ef_construction)
    return IndexUpdate(index, np.arange(len(stored), dtype=np.int64), np.zeros(0, dtype=np.int64), "rebuild",
                       reason)
