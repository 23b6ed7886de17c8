"""causal-lm training data as packed token sequences, from one of three places:

- spec.dataset.format jsonl-text without spec.precompute: tokenized and packed at start-up on every rank (data.py);
- jsonl-text with spec.precompute enabled: the writing rank tokenizes and packs once (the same `pack`, so the
  sequences are the same) into shards under the bucket's precompute cache (kubeforge.storage.layout), keyed by a
  hash of the dataset listing, the tokenizer and the sequence length; later attempts, re-runs and other resources
  with the same inputs read the shards and never run the tokenizer;
- spec.dataset.format tokenized-shards: spec.dataset.uri is such a cache prefix (or any prefix in its format).

The format under a prefix: MANIFEST.json, written last (a prefix without it is torn and never read), with
`format` "kubeforge.tokenized-shards/1", `count` (sequences), `sequenceLength`, `dtype` (int32 or int64) and
`shards`: [{file, count}] in sample-id order; each shard a safetensors file whose tensor `input_ids` is
[count, sequenceLength]."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from kubeforge.storage.layout import MANIFEST_FILE, parse_s3_uri, precompute_cache_prefix
from kubeforge_workloads.common.errors import DataError, UserError, WorkloadError
from kubeforge_workloads.common.storage import download_files, download_uri, utcnow
from kubeforge_workloads.pretrain.cache import (cache_digest, commit, created_by, enum_value, shard_paths,
                                               tokenizer_pipeline)
from kubeforge_workloads.pretrain.data import load_sequences, pack, read_texts, require_one_batch

SHARDS_FORMAT = "kubeforge.tokenized-shards/1"
CACHE_FORMAT = 1
"""Bump when what is stored, or how it is packed, changes: older caches then no longer match."""
SHARD_TOKENS = 16 * 1024 * 1024
"""About 64 MiB of int32 per shard."""
TENSOR_NAME = "input_ids"


@dataclass
class TrainingSequences:
    sequences: object
    """[count, sequence_length] int64 tensor; sample id i is row i."""
    uri: Optional[str] = None
    """The s3:// prefix of the shards read or written; None when packed at start-up without a cache."""
    reused: bool = False
    """True when the shards were there already (an earlier attempt, run or resource wrote them)."""

    def report(self) -> Optional[dict]:
        """What result.json records as `tokenizedShards`."""
        return {"uri": self.uri, "reused": self.reused} if self.uri else None


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides the token ids: the tokenizer pipeline (vocabulary, merges, normalizer, added tokens)
    and the end-of-sequence id that separates texts."""
    digest = hashlib.sha256(json.dumps(tokenizer_pipeline(tokenizer), sort_keys=True).encode())
    digest.update(f"eos={tokenizer.eos_token_id}".encode())
    return digest.hexdigest()


def dataset_fingerprint(store, uri: str) -> str:
    """sha256 of the dataset's listing (relative name, size, ETag of every object): a changed, added or removed file
    changes it, re-uploading the same bytes does not."""
    bucket, key = parse_s3_uri(uri)
    pages = store.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
    objects = [item for page in pages for item in page.get("Contents", [])]
    exact = [item for item in objects if item["Key"] == key]
    if exact:  # a single file: not its siblings that share its name as a prefix (train.jsonl vs train.jsonl.bak)
        objects = exact
    else:
        root = key.rstrip("/") + "/" if key.strip("/") else ""
        objects = [item for item in objects if item["Key"].startswith(root) and not item["Key"].endswith("/")]
    if not objects:
        raise UserError(f"spec.dataset.uri {uri} does not exist in the object store")
    return cache_digest(sorted([item["Key"][len(key):], item["Size"], item["ETag"].strip('"')] for item in objects))


def cache_inputs(spec, dataset_fp: str, tokenizer_fp: str) -> dict:
    """Everything the packed sequences depend on, as the manifest records it (not the learning rate, batch size,
    model or anything else training alone uses)."""
    dataset = spec.dataset
    return {"cacheFormat": CACHE_FORMAT,
            "dataset": {"uri": dataset.uri, "format": enum_value(dataset.format), "textField": dataset.text_field,
                        "fingerprint": dataset_fp},
            "tokenizer": tokenizer_fp, "sequenceLength": spec.training.sequence_length}


def cache_key(spec, dataset_fp: str, tokenizer_fp: str) -> str:
    """The cache key: equal inputs, equal key, on every machine."""
    return cache_digest(cache_inputs(spec, dataset_fp, tokenizer_fp))


def training_sequences(spec, tokenizer, cache: Path, storage, *, is_writer: bool,
                       wait: Callable[[], None]) -> TrainingSequences:
    """The packed sequences every rank trains on (see the module docstring for where they come from).

    With precompute, every rank calls wait() exactly once after the writer's part, whether or not the cache existed:
    a rank that decided alone to skip the barrier could leave the others waiting for it."""
    store = storage.store
    if enum_value(spec.dataset.format) == "tokenized-shards":
        data = read_shards(spec, store, spec.dataset.uri, cache / "tokenized", field="spec.dataset.uri")
        _require_known_tokens(spec, data, tokenizer)
        require_one_batch(spec, len(data.sequences))
        return data
    precompute = spec.precompute
    if not (precompute and precompute.enabled):
        return TrainingSequences(load_sequences(spec, tokenizer, cache, store))
    dataset_fp, tokenizer_fp = dataset_fingerprint(store, spec.dataset.uri), tokenizer_fingerprint(tokenizer)
    key = cache_key(spec, dataset_fp, tokenizer_fp)
    bucket, prefix = storage.prefix.bucket, precompute_cache_prefix(key)
    uri = f"s3://{bucket}/{prefix}"
    existed = store.get(bucket, prefix + MANIFEST_FILE) is not None
    written = None
    if not existed and is_writer:
        written = _write(spec, tokenizer, cache, storage, prefix, dataset_fp, tokenizer_fp)
    wait()
    if written is not None:
        print(f"kubeforge: {len(written)} packed sequences of {spec.training.sequence_length} tokens written to "
              f"{uri}", flush=True)
        require_one_batch(spec, len(written))
        return TrainingSequences(written, uri=uri, reused=False)
    if store.get(bucket, prefix + MANIFEST_FILE) is None:
        raise WorkloadError(f"{uri}: the tokenized shards have no {MANIFEST_FILE} after the writing rank finished")
    data = read_shards(spec, store, uri, cache / "tokenized" / key, field="the precompute cache")
    if existed:
        print(f"kubeforge: reusing {len(data.sequences)} packed sequences from {uri}", flush=True)
    require_one_batch(spec, len(data.sequences))
    return TrainingSequences(data.sequences, uri=uri, reused=existed)


def _write(spec, tokenizer, cache: Path, storage, prefix: str, dataset_fp: str, tokenizer_fp: str):
    """Tokenize and pack with data.pack, write the shards, upload them, then the manifest (last: only then does the
    cache exist)."""
    import torch
    from safetensors.torch import save_file

    source, length = spec.dataset.uri, spec.training.sequence_length
    sequences = pack(read_texts(download_uri(storage.store, source, cache / "dataset"), spec.dataset.text_field,
                                source), tokenizer, length)
    local = cache / "tokenized-out"
    local.mkdir(parents=True, exist_ok=True)
    stored = sequences.to(torch.int32) if len(tokenizer) < 2**31 else sequences
    per_shard = max(1, SHARD_TOKENS // length)
    shards, files = [], {}
    for number, start in enumerate(range(0, len(sequences), per_shard)):
        name = f"shard-{number:05d}.safetensors"
        part = stored[start:start + per_shard].contiguous()
        save_file({TENSOR_NAME: part}, str(local / name))
        shards.append({"file": name, "count": len(part)})
        files[prefix + name] = local / name
    manifest = {"format": SHARDS_FORMAT, "key": cache_key(spec, dataset_fp, tokenizer_fp),
                "inputs": cache_inputs(spec, dataset_fp, tokenizer_fp),
                "count": len(sequences), "sequenceLength": length, "dtype": str(stored.dtype).removeprefix("torch."),
                "tokenizer": tokenizer_fp, "eosTokenId": tokenizer.eos_token_id, "vocabSize": len(tokenizer),
                "dataset": {"uri": source, "fingerprint": dataset_fp}, "shards": shards, "created": utcnow(),
                "createdBy": created_by(storage.context)}
    commit(storage, prefix, files, manifest)
    return sequences


def _require_known_tokens(spec, data: TrainingSequences, tokenizer) -> None:
    """Ids beyond the tokenizer's vocabulary come from another tokenizer; the embedding would fail on them later
    with an index error that names neither."""
    top = int(data.sequences.max()) if data.sequences.numel() else -1
    if top >= len(tokenizer):
        field = "spec.tokenizer.uri" if spec.tokenizer else "spec.model.uri"
        raise UserError(f"spec.dataset.uri {data.uri} holds token id {top} but the tokenizer of {field} has only "
                        f"{len(tokenizer)} tokens: use the tokenizer the shards were packed with")


def _prefix(uri: str) -> tuple[str, str, str]:
    """bucket, key prefix ending in / (or empty), and the s3:// URI of that prefix."""
    bucket, key = parse_s3_uri(uri)
    root = key.rstrip("/") + "/" if key.strip("/") else ""
    return bucket, root, f"s3://{bucket}/{root}"


def read_manifest(store, uri: str, field: str) -> dict:
    """The manifest of tokenized shards under `uri`; a UserError naming `field` when there is none."""
    bucket, root, base = _prefix(uri)
    raw = store.get(bucket, root + MANIFEST_FILE)
    if raw is None:
        raise UserError(f"{field} {uri} holds no {MANIFEST_FILE}: tokenized-shards reads a prefix that a "
                        "spec.precompute step wrote (its manifest is written last); point it there or use "
                        "format jsonl-text")
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as error:
        raise DataError(f"{base}{MANIFEST_FILE} is not JSON ({error.msg})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != SHARDS_FORMAT:
        raise DataError(f"{uri}: {MANIFEST_FILE} is not a {SHARDS_FORMAT} manifest")
    return manifest


def check_sequence_length(spec, manifest: dict, uri: str, field: str) -> None:
    length = spec.training.sequence_length
    if manifest.get("sequenceLength") != length:
        raise UserError(f"{field} {uri} holds sequences of {manifest.get('sequenceLength')} tokens but "
                        f"spec.training.sequenceLength is {length}: set spec.training.sequenceLength to "
                        f"{manifest.get('sequenceLength')} or point {field} at shards packed for {length} tokens")


def read_shards(spec, store, uri: str, local: Path, field: str) -> TrainingSequences:
    """Every shard under `uri`, validated against its manifest and spec.training.sequenceLength."""
    import torch
    from safetensors.torch import load_file

    manifest = read_manifest(store, uri, field)
    check_sequence_length(spec, manifest, uri, field)
    length = spec.training.sequence_length
    bucket, root, base = _prefix(uri)
    shards = manifest.get("shards") or []
    paths = shard_paths(shards, local, base)
    download_files(store.client, bucket, {root + path.name: path for path in paths})
    parts = []
    for shard, path in zip(shards, paths):
        tensor = load_file(str(path)).get(TENSOR_NAME)
        if tensor is None or tensor.dim() != 2 or tensor.shape[1] != length or len(tensor) != shard["count"]:
            raise DataError(f"{base}{shard['file']} does not hold the [{shard['count']}, {length}] {TENSOR_NAME} "
                            f"its {MANIFEST_FILE} lists")
        parts.append(tensor.to(torch.int64))
    sequences = torch.cat(parts) if parts else torch.empty(0, length, dtype=torch.int64)
    if len(sequences) != manifest.get("count"):
        raise DataError(f"{uri}: its shards hold {len(sequences)} sequences, its {MANIFEST_FILE} says "
                        f"{manifest.get('count')}")
    return TrainingSequences(sequences, uri=base, reused=True)
