"""The vector index engine (faiss): build flat or HNSW over the chunk vectors, grow the previous version's index
with a sync's new vectors, search with an optional id filter while skipping retired ids, and measure recall@k of
the index against exact search.

A vector id is a row of the faiss index and never moves: a full build numbers the chunk table's rows 0..n-1; an
incremental sync appends its new chunks' vectors after the previous version's and leaves the vectors of deleted
or changed chunks in the graph as tombstones (ids no chunk row names), which every search filters out. faiss's
HNSW cannot remove a vector (`remove_ids` is not implemented for it), so tombstones it is, until they pass
versions.REBUILD_TOMBSTONE_FRACTION and the next sync builds afresh. Scores are always "higher is closer": cosine
similarity, inner product, or the negated squared L2 distance.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

EXACT_FILTER_LIMIT = 50_000
"""Filtered searches over at most this many vectors are exact (numpy over the subset): HNSW with a selective
filter can walk past every allowed node and return fewer than k."""


def _faiss():
    import faiss

    return faiss


def prepare(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Vectors as the index stores them: float32, contiguous, unit length for cosine."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms == 0, 1, norms)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def build(vectors: np.ndarray, metric: str, index_type: str, m: int = 32, ef_construction: int = 200):
    """A faiss index over `vectors` (rows of prepare()). HNSW insertion runs on one thread, so the same vectors
    always give the same graph (and the same answers)."""
    faiss = _faiss()
    dims = vectors.shape[1]
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    if index_type == "flat":
        index = faiss.IndexFlat(dims, faiss_metric)
        index.add(vectors)
        return index
    index = faiss.IndexHNSWFlat(dims, m, faiss_metric)
    index.hnsw.efConstruction = ef_construction
    add(index, vectors)
    return index


def add(index, vectors: np.ndarray) -> np.ndarray:
    """Append `vectors` (rows of prepare()) to `index`; returns their ids (index.ntotal before, onwards). One
    thread, so the same index and vectors always give the same graph."""
    faiss = _faiss()
    first = index.ntotal
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.add(vectors)
    finally:
        faiss.omp_set_num_threads(threads)
    return np.arange(first, index.ntotal, dtype=np.int64)


def misnumbered(ids: np.ndarray, total: int) -> int:
    """How many of `ids` name no vector of an index of `total` (below 0 or past its end) or repeat an earlier one:
    0 when every chunk holds a vector of its own."""
    ids = np.asarray(ids, dtype=np.int64)
    inside = ids[(ids >= 0) & (ids < total)]
    return len(ids) - len(np.unique(inside))


def tombstones(total: int, live_ids: np.ndarray) -> np.ndarray:
    """Ids below `total` that no live chunk holds: vectors of deleted or changed chunks still in the graph."""
    return np.setdiff1d(np.arange(total, dtype=np.int64), np.asarray(live_ids, dtype=np.int64))


def search(index, queries: np.ndarray, k: int, metric: str, ef_search: Optional[int] = None,
           allowed: Optional[np.ndarray] = None, allowed_vectors: Optional[np.ndarray] = None,
           excluded: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the k closest vectors per query, -1 ids where fewer exist. `allowed` restricts the answer
    to those ids (exactly, over `allowed_vectors` = their vectors, when there are few of them); otherwise
    `excluded` ids (tombstones) are never returned."""
    faiss = _faiss()
    queries = prepare(np.atleast_2d(queries), metric)
    live = index.ntotal - (0 if excluded is None or allowed is not None else len(excluded))
    if live <= 0:
        return np.full((len(queries), 0), np.nan, dtype=np.float32), np.full((len(queries), 0), -1)
    k = max(1, min(k, live))
    selector = None
    if allowed is not None:
        allowed = np.asarray(allowed, dtype=np.int64)
        if len(allowed) == 0:
            return np.full((len(queries), 0), np.nan, dtype=np.float32), np.full((len(queries), 0), -1)
        if allowed_vectors is not None and len(allowed) <= EXACT_FILTER_LIMIT:
            return _exact(allowed_vectors, queries, min(k, len(allowed)), metric, allowed)
        selector = faiss.IDSelectorBatch(allowed)
    elif excluded is not None and len(excluded):
        # IDSelectorNot keeps a reference to the batch it negates (faiss's add_ref_in_constructor).
        selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.asarray(excluded, dtype=np.int64)))
    params = None
    if isinstance(index, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(efSearch=max(ef_search or 16, k))
    if selector is not None:
        params = params or faiss.SearchParameters()
        params.sel = selector
    distances, ids = index.search(queries, k, params=params) if params is not None else index.search(queries, k)
    return (-distances if metric == "l2" else distances), ids


def _exact(vectors: np.ndarray, queries: np.ndarray, k: int, metric: str, ids: Optional[np.ndarray] = None
           ) -> tuple[np.ndarray, np.ndarray]:
    if metric == "l2":
        scores = -(np.sum(queries ** 2, axis=1, keepdims=True) - 2 * queries @ vectors.T
                   + np.sum(vectors ** 2, axis=1)[None, :])
    else:
        scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    return top, (ids[order] if ids is not None else order)


def recall_at_k(index, vectors: np.ndarray, metric: str, k: int = 10, sample: int = 200,
                ef_search: Optional[int] = None, seed: int = 0, excluded: Optional[np.ndarray] = None
                ) -> tuple[float, int]:
    """(recall@k, queries): a deterministic sample of the live vectors (`vectors`; the index also holds the
    `excluded` tombstones) used as queries; an answer counts when the index returns it among its k or it scores
    at least as well as the k-th exact answer (ties between equal vectors, such as duplicate chunks, are not
    misses)."""
    total = len(vectors)
    if total == 0:
        return 0.0, 0
    k = min(k, total)
    picks = np.random.default_rng(seed).choice(total, size=min(sample, total), replace=False)
    queries = vectors[np.sort(picks)]
    exact_scores, _ = _exact(vectors, queries, k, metric)
    approx_scores, approx_ids = search(index, queries, k, metric, ef_search, excluded=excluded)
    found = 0
    for row in range(len(queries)):
        threshold = exact_scores[row, -1] - 1e-5 * max(1.0, abs(float(exact_scores[row, -1])))
        found += int(np.sum((approx_ids[row] >= 0) & (approx_scores[row] >= threshold)))
    return found / (len(queries) * k), len(queries)


def save(index, path: str) -> None:
    _faiss().write_index(index, path)


def load(path: str):
    return _faiss().read_index(path)
