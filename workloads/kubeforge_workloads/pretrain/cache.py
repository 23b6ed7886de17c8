"""What the precompute caches (latents.py for diffusion, precompute.py for causal-lm) share: a key that is the hash of
everything the cached data depends on, the tokenizer as part of that, and the manifest-last discipline under
kubeforge.storage.layout.precompute_cache_prefix(key): shards first, MANIFEST.json last, so a prefix without a
manifest is torn and never read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kubeforge.storage.layout import MANIFEST_FILE
from kubeforge_workloads.common.errors import DataError
from kubeforge_workloads.common.storage import upload_files


def enum_value(field):
    """A spec enum's wire value (the field itself when it is already a plain value)."""
    return getattr(field, "value", field)


def cache_digest(inputs) -> str:
    """sha256 hex of the canonical JSON of `inputs`: equal inputs, equal key, on every machine."""
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def tokenizer_pipeline(tokenizer):
    """What decides a tokenizer's ids (vocabulary, merges, normalizer, added tokens), as JSON-able data."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Without the padding and truncation the last call left behind: they are state, not the tokenizer.
        return {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
    return sorted(tokenizer.get_vocab().items())


def created_by(context) -> dict:
    """The manifest's record of the resource and attempt that computed the cache."""
    return {"kind": context.kind, "namespace": context.namespace, "name": context.name, "uid": context.uid,
            "attempt": context.attempt}


def commit(storage, prefix: str, files: dict[str, Path], manifest: dict) -> None:
    """Upload the shards (key -> local file), then the manifest: only then does the cache exist."""
    bucket = storage.prefix.bucket
    upload_files(storage.store.client, bucket, files)
    storage.store.put(bucket, prefix + MANIFEST_FILE, json.dumps(manifest, indent=1).encode())


def shard_paths(shards, local: Path, where: str) -> list[Path]:
    """The local path of each shard a manifest lists (under `local`, in order). A name that is not a plain file name
    next to the manifest (a path, `..`) is refused: downloading it would write outside `local`."""
    paths = []
    for shard in shards:
        name = shard.get("file") if isinstance(shard, dict) else None
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
            raise DataError(f"{where}{MANIFEST_FILE} lists shard file {name!r}: a shard is a plain file name next to "
                            "its manifest")
        paths.append(local / name)
    return paths
