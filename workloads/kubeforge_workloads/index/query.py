"""Query a VectorIndex version: the library the CLI, the ServingEndpoint's RAG and the EvalRun share.

    index = open_index("s3://bucket/ns/VectorIndex/docs")      # the current version
    index = open_index("s3://bucket/ns/VectorIndex/docs", version=3)
    hits = index.search("how do I resume training?", k=5, filter={"format": "md"})

A version, once committed, never changes: opening it downloads its files once per process (and once per local
cache directory), verified against the manifest, and a reader keeps using it while newer versions land.
"""

from __future__ import annotations

import json
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from kubeforge.storage.layout import (
    INDEX_CHUNKS_FILE, INDEX_VECTORS_FILE, ResourcePrefix, parse_s3_uri,
)
from kubeforge_workloads.common.errors import UserError
from kubeforge_workloads.index import engine
from kubeforge_workloads.index.versions import committed_versions, download_version, read_manifest

_opened: dict[tuple[str, str, int, str], "IndexVersion"] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    document_id: str
    score: float
    """Higher is closer: cosine similarity, inner product, or the negated squared L2 distance."""
    text: str
    metadata: dict


class IndexVersion:
    """One committed version held in memory: chunk table, vectors and the faiss index."""

    def __init__(self, prefix: ResourcePrefix, version: int, manifest: dict, local_dir: Path):
        import pyarrow.parquet as pq

        self.prefix, self.version, self.manifest = prefix, version, manifest
        table = pq.read_table(local_dir / INDEX_CHUNKS_FILE)
        self.chunk_ids = table.column("chunk_id").to_pylist()
        self.document_ids = table.column("document_id").to_pylist()
        self.texts = table.column("text").to_pylist()
        self.metadata = [json.loads(m) for m in table.column("metadata").to_pylist()]
        raw = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        self.metric = manifest["metric"]
        self.vectors = engine.prepare(np.asarray(raw, dtype=np.float32).reshape(len(self.chunk_ids), -1),
                                      self.metric)
        self.index = engine.load(str(local_dir / INDEX_VECTORS_FILE))
        self.ef_search = manifest["index"].get("hnsw", {}).get("efSearch")
        # Row r's vector is id vector_ids[r] in the index (a version written before ids were stable: r itself);
        # ids no row holds are tombstones of an incremental sync.
        self.vector_ids = (np.asarray(table.column("vector_id").to_numpy(), dtype=np.int64)
                           if "vector_id" in table.column_names else np.arange(len(self.chunk_ids), dtype=np.int64))
        misnumbered = engine.misnumbered(self.vector_ids, self.index.ntotal)
        if misnumbered:
            # A writer that forgot to number its chunks would otherwise make every search silently come back empty.
            raise ValueError(f"index version {version}: {misnumbered} of {len(self.vector_ids)} chunks name a "
                             f"vector id outside the index's {self.index.ntotal} vectors, or ids repeat")
        self.row_of = np.full(self.index.ntotal, -1, dtype=np.int64)
        self.row_of[self.vector_ids] = np.arange(len(self.vector_ids))
        self.tombstones = engine.tombstones(self.index.ntotal, self.vector_ids)

    @property
    def uri(self) -> str:
        return f"s3://{self.prefix.bucket}/{self.prefix.index_version_key(self.version)}"

    @property
    def dims(self) -> int:
        return int(self.manifest["dims"])

    def embed(self, texts: list[str]) -> np.ndarray:
        """Queries embedded with the model and normalization the version was built with."""
        from kubeforge_workloads.index.embedding import encode, load_model

        embedding = self.manifest["embedding"]
        return encode(load_model(embedding["model"], "auto"), texts, 32, embedding["normalize"])

    def search(self, query: Union[str, np.ndarray], k: int = 5, filter: Optional[dict] = None) -> list[Hit]:
        """The k chunks closest to `query` (text, or a vector of the index's dimensions), best first; `filter`
        keeps only chunks whose metadata has every key equal to the given value (compared as text)."""
        vector = self.embed([query])[0] if isinstance(query, str) else np.asarray(query, dtype=np.float32)
        if vector.shape[-1] != self.dims:
            raise ValueError(f"query vector has {vector.shape[-1]} dimensions, index version {self.version} has "
                             f"{self.dims}")
        allowed = rows = None
        if filter:
            wanted = {key: str(value) for key, value in filter.items()}
            rows = np.array([i for i, meta in enumerate(self.metadata)
                             if all(str(meta.get(key)) == value for key, value in wanted.items())], dtype=np.int64)
            allowed = self.vector_ids[rows]
        scores, ids = engine.search(self.index, vector, k, self.metric, self.ef_search, allowed,
                                    None if rows is None else self.vectors[rows],
                                    self.tombstones if len(self.tombstones) else None)
        hits = []
        for score, vector_id in zip(scores[0], ids[0]):
            row = int(self.row_of[vector_id]) if vector_id >= 0 else -1
            if row >= 0:
                hits.append(Hit(self.chunk_ids[row], self.document_ids[row], float(score), self.texts[row],
                                self.metadata[row]))
        return hits


def prefix_of(location: Union[str, ResourcePrefix]) -> ResourcePrefix:
    if isinstance(location, ResourcePrefix):
        return location
    bucket, key = parse_s3_uri(location)
    return ResourcePrefix(bucket, key.strip("/"))


def current_version(location: Union[str, ResourcePrefix], store=None) -> Optional[int]:
    from kubeforge.storage.objectstore import S3ObjectStore

    versions = committed_versions(store or S3ObjectStore(), prefix_of(location))
    return versions[-1] if versions else None


def open_index(location: Union[str, ResourcePrefix], version: Optional[int] = None, store=None,
               cache_dir: Optional[Path] = None) -> IndexVersion:
    """Version `version` (default: the current one) of the VectorIndex whose resource prefix is `location`
    (s3://bucket/<namespace>/VectorIndex/<name>, or a ResourcePrefix)."""
    from kubeforge.storage.objectstore import S3ObjectStore

    store = store or S3ObjectStore()
    prefix = prefix_of(location)
    if version is None:
        version = current_version(prefix, store)
        if version is None:
            raise UserError(f"s3://{prefix.bucket}/{prefix.prefix} has no committed index version yet: wait for "
                            "the VectorIndex to become Ready")
    manifest = read_manifest(store, prefix, version)
    if manifest is None:
        raise UserError(f"index version {version} of s3://{prefix.bucket}/{prefix.prefix} does not exist (never "
                        "committed, or removed by keepVersions)")
    # The digest tells a re-created resource's version n from the old one's, which the cache may still hold.
    key = (prefix.bucket, prefix.prefix, version, manifest["files"][INDEX_VECTORS_FILE]["sha256"])
    with _lock:
        if key in _opened:
            return _opened[key]
        root = cache_dir or Path(tempfile.gettempdir()) / "kubeforge-index-cache"
        local = root / prefix.bucket / prefix.prefix / f"v-{version}"
        download_version(store, prefix, version, manifest, local, [INDEX_CHUNKS_FILE, INDEX_VECTORS_FILE])
        _opened[key] = IndexVersion(prefix, version, manifest, local)
        return _opened[key]


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m kubeforge_workloads.index.query s3://bucket/ns/VectorIndex/name "text" -k 5 --filter k=v`: the
    hits as JSON lines (what `kubeforge query` runs where the workload stack is installed)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m kubeforge_workloads.index.query")
    parser.add_argument("location", help="the VectorIndex's resource prefix, s3://bucket/<namespace>/VectorIndex/<name>")
    parser.add_argument("text")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--version", type=int, default=None, help="an index version (default: the current one)")
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                        help="keep chunks whose metadata KEY equals VALUE (repeatable)")
    args = parser.parse_args(argv)
    bad = [item for item in args.filter if "=" not in item]
    if bad:
        parser.error(f"--filter {bad[0]!r} is not KEY=VALUE")
    try:
        index = open_index(args.location, args.version)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for hit in index.search(args.text, args.k, dict(item.split("=", 1) for item in args.filter) or None):
        print(json.dumps({"version": index.version, "chunkId": hit.chunk_id, "documentId": hit.document_id,
                          "score": round(hit.score, 6), "text": hit.text, "metadata": hit.metadata}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
