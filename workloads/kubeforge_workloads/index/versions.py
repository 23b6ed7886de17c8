"""Index versions in the object store: the manifest written last, what a sync can reuse from the current version,
and retention.

    outputs/index/v-<n>/chunks.parquet     chunk_id, document_id, ordinal, text, metadata (JSON), content_hash
                                           (of the chunk text), document_hash, vector, vector_id
    outputs/index/v-<n>/documents.parquet  one row per document or skipped record: what the next sync diffs
    outputs/index/v-<n>/index.faiss        the faiss index; a row's vector is id vector_id (format 1, without
                                           the column: its row number); ids no row holds are tombstones
    outputs/index/v-<n>/MANIFEST.json      written last, lists every file with size and sha256; `vectors` says
                                           the index's size, tombstones and whether it was grown or rebuilt
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from kubeforge.storage.layout import (
    INDEX_CHUNKS_FILE, INDEX_DOCUMENTS_FILE, INDEX_VECTORS_FILE, MANIFEST_FILE, ResourcePrefix,
    committed_index_versions, index_versions_present,
)

VERSION_FILES = (INDEX_CHUNKS_FILE, INDEX_DOCUMENTS_FILE, INDEX_VECTORS_FILE)
MANIFEST_FORMAT = 2
"""2: chunks.parquet has vector_id (stable ids, tombstones); 1: row r is vector id r."""


def config_fingerprint(spec) -> str:
    """What decides a document's chunks and vectors; a version built under another fingerprint shares nothing."""
    shaping = {"chunking": spec.chunking.wire(), "model": spec.embedding.model,
               "normalize": spec.embedding.normalize, "jsonl": spec.source.jsonl.wire()}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ObjectRecord:
    """An object the previous version read: how to tell it is unchanged without reading it again."""

    etag: str
    size: int


@dataclass
class SyncPlan:
    """Documents of this sync against the previous version, by content hash."""

    unchanged: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def to_embed(self) -> set[str]:
        return set(self.changed) | set(self.added)


def diff_documents(previous: dict[str, str], current: dict[str, str]) -> SyncPlan:
    """previous/current: document id -> content hash. Unchanged documents keep their chunks and vectors."""
    plan = SyncPlan()
    for document_id, digest in sorted(current.items()):
        if document_id not in previous:
            plan.added.append(document_id)
        elif previous[document_id] == digest:
            plan.unchanged.append(document_id)
        else:
            plan.changed.append(document_id)
    plan.deleted = sorted(set(previous) - set(current))
    return plan


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def committed_versions(store, prefix: ResourcePrefix) -> list[int]:
    return committed_index_versions(prefix, store.list(prefix.bucket, prefix.index_versions_key))


def read_manifest(store, prefix: ResourcePrefix, version: int) -> Optional[dict]:
    raw = store.get(prefix.bucket, prefix.index_manifest_key(version))
    return json.loads(raw) if raw else None


def download_version(store, prefix: ResourcePrefix, version: int, manifest: dict, local_dir: Path,
                     names: Iterable[str] = VERSION_FILES) -> Path:
    """Download the version's files and verify each against the manifest (size and sha256)."""
    local_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        expected = manifest["files"][name]
        target = local_dir / name
        if not (target.is_file() and target.stat().st_size == expected["size"]
                and file_digest(target) == expected["sha256"]):
            store.client.download_file(prefix.bucket, prefix.index_version_key(version) + name, str(target))
        if target.stat().st_size != expected["size"] or file_digest(target) != expected["sha256"]:
            raise IOError(f"index version {version}: {name} does not match its manifest (size or sha256); the "
                          "version is damaged")
    return local_dir


def commit_version(store, prefix: ResourcePrefix, version: int, local_dir: Path, manifest: dict) -> str:
    """Upload the version's files, then the manifest that makes the version visible; returns the version URI."""
    base = prefix.index_version_key(version)
    store.delete_prefix(prefix.bucket, base)  # what an interrupted attempt left of this version
    files = {}
    for name in VERSION_FILES:
        path = local_dir / name
        store.client.upload_file(str(path), prefix.bucket, base + name)
        files[name] = {"size": path.stat().st_size, "sha256": file_digest(path)}
    manifest = {**manifest, "format": MANIFEST_FORMAT, "version": version, "files": files}
    store.put(prefix.bucket, base + MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return f"s3://{prefix.bucket}/{base}"


def versions_to_delete(present: list[int], committed: list[int], current: int, keep: int) -> list[int]:
    """The newest `keep` committed versions stay (the current one always, whatever keep says); older committed
    ones go, and so do uncommitted leftovers below the current version (attempts that died while writing)."""
    kept = set(sorted(v for v in committed if v <= current)[-max(keep, 1):]) | {current}
    return sorted(v for v in present if v < current and v not in kept)


def apply_retention(store, prefix: ResourcePrefix, current: int, keep: int) -> list[int]:
    keys = list(store.list(prefix.bucket, prefix.index_versions_key))
    doomed = versions_to_delete(index_versions_present(prefix, keys), committed_index_versions(prefix, keys),
                                current, keep)
    for version in doomed:
        # The manifest goes first, so a half-deleted version is never mistaken for a complete one.
        store.client.delete_object(Bucket=prefix.bucket, Key=prefix.index_manifest_key(version))
        store.delete_prefix(prefix.bucket, prefix.index_version_key(version))
    return doomed
