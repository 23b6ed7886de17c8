"""Embedded chunks of a version still being built, saved every few seconds, so the retry of a killed build embeds
only the documents it had not finished.

Parts go under outputs/index/v-<n>/partial/ (n: the version being built, which a retry builds again) and hold whole
documents only. A retry reuses a document's saved chunks when its content hash is still the one they were made
from; committing the version removes the parts.
"""

from __future__ import annotations

import io
import time
from typing import Callable, Optional

import numpy as np

from kubeforge.storage.layout import ResourcePrefix

FLUSH_SECONDS = 10.0
CHUNK_COLUMNS = ("document_id", "ordinal", "chunks_in_document", "text", "metadata", "document_hash")


def embedded_table(batch: dict):
    """A batch from the embedding actors as an Arrow table (vector: fixed-size list of float32)."""
    import pyarrow as pa

    vectors = np.asarray(batch["vector"], dtype=np.float32)
    return pa.table({
        "document_id": pa.array([str(v) for v in batch["document_id"]], pa.string()),
        "ordinal": pa.array(np.asarray(batch["ordinal"], dtype=np.int32)),
        "chunks_in_document": pa.array(np.asarray(batch["chunks_in_document"], dtype=np.int32)),
        "text": pa.array([str(v) for v in batch["text"]], pa.string()),
        "metadata": pa.array([str(v) for v in batch["metadata"]], pa.string()),
        "document_hash": pa.array([str(v) for v in batch["document_hash"]], pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
    })


def _complete_documents(table) -> set[str]:
    counts: dict[str, int] = {}
    expected: dict[str, int] = {}
    for document_id, total in zip(table.column("document_id").to_pylist(),
                                  table.column("chunks_in_document").to_pylist()):
        counts[document_id] = counts.get(document_id, 0) + 1
        expected[document_id] = total
    return {d for d, n in counts.items() if n >= expected[d]}


class PartialChunks:
    def __init__(self, store, prefix: ResourcePrefix, version: int, attempt: int, interval: float = FLUSH_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.store, self.prefix, self.version, self.attempt = store, prefix, version, attempt
        self.interval, self.clock = interval, clock
        self.pending: list = []
        self.parts = 0
        self.last_flush = clock()

    def add(self, table) -> None:
        self.pending.append(table)
        if self.clock() - self.last_flush >= self.interval:
            self.flush()

    def flush(self) -> int:
        """Save the pending chunks of every complete document; returns how many chunks were saved."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        self.last_flush = self.clock()
        if not self.pending:
            return 0
        table = pa.concat_tables(self.pending)
        complete = pa.array(sorted(_complete_documents(table)), pa.string())
        done = pc.is_in(table.column("document_id"), value_set=complete)
        ready, rest = table.filter(done), table.filter(pc.invert(done))
        self.pending = [rest] if rest.num_rows else []
        if ready.num_rows == 0:
            return 0
        buffer = io.BytesIO()
        pq.write_table(ready, buffer)
        key = f"{self.prefix.index_partial_key(self.version)}part-{self.attempt}-{self.parts:05d}.parquet"
        self.store.put(self.prefix.bucket, key, buffer.getvalue())
        self.parts += 1
        return ready.num_rows


def load_partial(store, prefix: ResourcePrefix, version: int, wanted: Optional[dict[str, str]]) -> Optional[object]:
    """Saved chunks of complete documents whose content hash is still `wanted[document_id]` (None: every saved
    complete document, whatever its hash; current_only() narrows it later); None when none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for key in sorted(store.list(prefix.bucket, prefix.index_partial_key(version))):
        raw = store.get(prefix.bucket, key)
        if raw:
            tables.append(pq.read_table(io.BytesIO(raw)))
    if not tables:
        return None
    table = pa.concat_tables(tables)
    if wanted is not None:
        table = _with_hashes(table, wanted)
    # Two attempts may both have saved a document: keep the first copy of every chunk.
    seen, keep = set(), []
    for key in zip(table.column("document_id").to_pylist(), table.column("document_hash").to_pylist(),
                   table.column("ordinal").to_pylist()):
        keep.append(key not in seen)
        seen.add(key)
    table = _complete_only(table.filter(pa.array(keep, pa.bool_())))
    return table if table.num_rows else None


def current_only(table, wanted: dict[str, str]) -> Optional[object]:
    """The saved chunks (load_partial(..., None)) of documents whose content hash is still wanted[document_id]."""
    if table is None:
        return None
    table = _complete_only(_with_hashes(table, wanted))
    return table if table.num_rows else None


def saved_documents(table) -> set[tuple[str, str]]:
    """(document id, content hash) of every document a load_partial() table holds."""
    if table is None:
        return set()
    return set(zip(table.column("document_id").to_pylist(), table.column("document_hash").to_pylist()))


def _with_hashes(table, wanted: dict[str, str]):
    import pyarrow as pa

    current = [wanted.get(d) == h for d, h in zip(table.column("document_id").to_pylist(),
                                                   table.column("document_hash").to_pylist())]
    return table.filter(pa.array(current, pa.bool_()))


def _complete_only(table):
    """Rows of documents all of whose chunks are there, counted per (document id, content hash): two attempts
    may have saved different contents of one document."""
    import pyarrow as pa

    keys = list(zip(table.column("document_id").to_pylist(), table.column("document_hash").to_pylist()))
    counts: dict[tuple[str, str], int] = {}
    expected: dict[tuple[str, str], int] = {}
    for key, total in zip(keys, table.column("chunks_in_document").to_pylist()):
        counts[key] = counts.get(key, 0) + 1
        expected[key] = total
    return table.filter(pa.array([counts[key] >= expected[key] for key in keys], pa.bool_()))
