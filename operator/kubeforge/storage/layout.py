"""The one definition of where things live in the object store (DESIGN.md §2).

    s3://<bucket>/<namespace>/<Kind>/<name>/
        progress.json                      heartbeat, rewritten every few seconds
        checkpoints/step-<n>/...           checkpoint files
        checkpoints/step-<n>/MANIFEST.json written last: the checkpoint counts only once it exists
        attempts/<n>/failure.json          what the workload knew when attempt n failed
        outputs/...                        adapters, merged models, eval tables
        outputs/index/v-<n>/...            VectorIndex version n: chunk table, document table, index file
        outputs/index/v-<n>/MANIFEST.json  written last: the version exists only once it does
        outputs/index/v-<n>/partial/...    embedded chunks of an unfinished build of version n, for its retry
        batches/<id>/progress.json         rows done/total of a ServingEndpoint's batch inference run <id>

    s3://<bucket>/_precompute/<cache key>/ inputs a workload computed once (e.g. diffusion latents), keyed by a hash
        shard files ...                    of everything they depend on; outside every resource's prefix, so later
        MANIFEST.json                      attempts, re-runs and other resources with the same inputs reuse them;
                                           written last: the cache exists only once it does
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional

PROGRESS_FILE = "progress.json"
MANIFEST_FILE = "MANIFEST.json"
FAILURE_FILE = "failure.json"
_STEP_DIR = re.compile(r"checkpoints/step-(\d+)/$")
_STEP_AT_END = re.compile(r"step-(\d+)/?$")
INDEX_CHUNKS_FILE = "chunks.parquet"
INDEX_DOCUMENTS_FILE = "documents.parquet"
INDEX_VECTORS_FILE = "index.faiss"
_INDEX_VERSION_DIR = re.compile(r"outputs/index/v-(\d+)/$")
_INDEX_VERSION_AT_START = re.compile(r"v-(\d+)/")
PRECOMPUTE_ROOT = "_precompute"
"""Not a valid namespace name (those start with a letter or digit), so no resource's prefix can collide with it."""
_CACHE_KEY = re.compile(r"^[0-9a-f]{16,128}$")


@dataclass(frozen=True)
class ResourcePrefix:
    bucket: str
    prefix: str

    @classmethod
    def for_resource(cls, bucket: str, namespace: str, kind: str, name: str,
                     override: Optional[str] = None) -> "ResourcePrefix":
        return cls(bucket, (override or f"{namespace}/{kind}/{name}").strip("/"))

    def key(self, *parts: str) -> str:
        return "/".join([self.prefix, *(p.strip("/") for p in parts if p)])

    def uri(self, *parts: str) -> str:
        return f"s3://{self.bucket}/{self.key(*parts)}"

    @property
    def progress_key(self) -> str:
        return self.key(PROGRESS_FILE)

    @property
    def checkpoints_key(self) -> str:
        return self.key("checkpoints") + "/"

    def checkpoint_key(self, step: int) -> str:
        return self.key("checkpoints", f"step-{step}") + "/"

    def manifest_key(self, step: int) -> str:
        return self.checkpoint_key(step) + MANIFEST_FILE

    def batch_progress_key(self, run_id: str) -> str:
        return self.key("batches", run_id, PROGRESS_FILE)

    def failure_key(self, attempt: int) -> str:
        return self.key("attempts", str(attempt), FAILURE_FILE)

    def output_key(self, *parts: str) -> str:
        return self.key("outputs", *parts)

    @property
    def index_versions_key(self) -> str:
        return self.output_key("index") + "/"

    def index_version_key(self, version: int) -> str:
        return self.output_key("index", f"v-{version}") + "/"

    def index_manifest_key(self, version: int) -> str:
        return self.index_version_key(version) + MANIFEST_FILE

    def index_partial_key(self, version: int) -> str:
        """Chunks a build of `version` embedded before it was interrupted; its retry reuses them."""
        return self.index_version_key(version) + "partial/"


def committed_steps(prefix: ResourcePrefix, keys: Iterable[str]) -> list[int]:
    """Steps whose manifest exists, ascending. Torn checkpoints (no manifest) never count."""
    steps = []
    base = prefix.checkpoints_key
    for key in keys:
        if not key.startswith(base) or not key.endswith("/" + MANIFEST_FILE):
            continue
        match = _STEP_DIR.search(key[: -len(MANIFEST_FILE)])
        if match:
            steps.append(int(match.group(1)))
    return sorted(set(steps))


def committed_index_versions(prefix: ResourcePrefix, keys: Iterable[str]) -> list[int]:
    """VectorIndex versions whose manifest exists, ascending; a version still being written (no manifest) never
    counts."""
    versions = []
    base = prefix.index_versions_key
    for key in keys:
        if not key.startswith(base) or not key.endswith("/" + MANIFEST_FILE):
            continue
        match = _INDEX_VERSION_DIR.search(key[: -len(MANIFEST_FILE)])
        if match:
            versions.append(int(match.group(1)))
    return sorted(set(versions))


def index_versions_present(prefix: ResourcePrefix, keys: Iterable[str]) -> list[int]:
    """Every version with any object under it, committed or not (what garbage collection looks at)."""
    base = prefix.index_versions_key
    found = set()
    for key in keys:
        if key.startswith(base):
            match = _INDEX_VERSION_AT_START.match(key[len(base):])
            if match:
                found.add(int(match.group(1)))
    return sorted(found)


def checkpoint_step_of(uri: Optional[str]) -> Optional[int]:
    """The step of a checkpoint's URI or key (`.../checkpoints/step-<n>/`, as status.progress.lastCheckpoint and
    resumedFrom hold it); None when there is none."""
    match = _STEP_AT_END.search(uri or "")
    return int(match.group(1)) if match else None


def precompute_cache_prefix(cache_key: str) -> str:
    """The key prefix, in the resource's bucket, of the precomputed inputs with this cache key (a hex digest of what
    they were computed from); its MANIFEST.json is written last."""
    if not _CACHE_KEY.match(cache_key):
        raise ValueError(f"a precompute cache key is a lowercase hex digest, not {cache_key!r}")
    return f"{PRECOMPUTE_ROOT}/{cache_key}/"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri!r}")
    return bucket, key
