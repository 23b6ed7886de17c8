"""A diffusion phase's model inputs: VAE latents and text-encoder hidden states of every image-caption pair.

With spec.precompute.latents (the seed's speed-up #2) they are computed once per phase resolution, stored in
spec.precompute.dtype as safetensors shards under the bucket's precompute cache (kubeforge.storage.layout), keyed
by a hash of everything they depend on (dataset listing, encoders and their weights, tokenizer, resolution, dtype),
and reused by later attempts, re-runs and other resources with the same inputs; only the U-Net runs while training.
Without it the VAE and the text encoder run at every batch (the baseline the benchmark measures against).

Latents are the VAE posterior's mean (deterministic, so the cache equals what an on-the-fly run would use), scaled
by vae.config.scaling_factor; captions are encoded as diffusers' StableDiffusionPipeline encodes prompts, so the
U-Net trains on what it samples from.

The manifest also holds the dataset's summary (count, skipped samples, first captions), so an attempt that finds
every phase cached never downloads the image dataset."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Optional, Sequence

from kubeforge.storage.layout import MANIFEST_FILE, precompute_cache_prefix
from kubeforge_workloads.common.errors import WorkloadError
from kubeforge_workloads.common.storage import download_files, utcnow
from kubeforge_workloads.pretrain.cache import (cache_digest, commit, created_by, enum_value, shard_paths,
                                               tokenizer_pipeline)
from kubeforge_workloads.pretrain.images import DatasetSummary, ImageDataset, ImagePairs, pixels

CACHE_FORMAT = 1
"""Bump when what is stored, or how it is computed, changes: older caches then no longer match."""
SHARD_SAMPLES = 1024
ENCODE_BATCH = 32
STORED_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def _source(component) -> dict:
    return {"uri": component.uri} if component.uri else {"config": component.config}


def cache_inputs(spec, resolution: int, dataset_fingerprint: str, encoders_fingerprint: str) -> dict:
    """Everything the cached tensors depend on, as the manifest records it."""
    dataset, model = spec.dataset, spec.model
    return {"cacheFormat": CACHE_FORMAT,
            "dataset": {"uri": dataset.uri, "format": enum_value(dataset.format), "imageField": dataset.image_field,
                        "captionField": dataset.caption_field, "fingerprint": dataset_fingerprint},
            "vae": _source(model.vae), "textEncoder": _source(model.text_encoder), "tokenizer": model.tokenizer.uri,
            "encoders": encoders_fingerprint, "resolution": resolution, "dtype": stored_dtype_name(spec)}


def cache_key(spec, resolution: int, dataset_fingerprint: str, encoders_fingerprint: str) -> str:
    """sha256 hex of the canonical JSON of cache_inputs: equal inputs, equal key, on every machine."""
    return cache_digest(cache_inputs(spec, resolution, dataset_fingerprint, encoders_fingerprint))


def stored_dtype_name(spec) -> str:
    return enum_value(spec.precompute.dtype) if spec.precompute else "fp16"


def encoders_fingerprint(vae, text_encoder, tokenizer) -> str:
    """sha256 of the encoders' configs and weights and the tokenizer's vocabulary: a component built from a config
    depends on the seed it was initialised with, and one loaded from a URI on what is there now."""
    import torch

    digest = hashlib.sha256()
    for module in (vae, text_encoder):
        digest.update(type(module).__name__.encode())
        digest.update(json.dumps(_meaningful(module.config), sort_keys=True, default=str).encode())
        for name, tensor in sorted(module.state_dict().items()):
            flat = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(tokenizer_pipeline(tokenizer), sort_keys=True).encode())
    digest.update(str(tokenizer.model_max_length).encode())
    return digest.hexdigest()


_BOOKKEEPING_KEYS = ("transformers_version", "name_or_path")


def _meaningful(config) -> dict:
    """A component's config without what says where and by which library version it was loaded (e.g. the
    attempt's download directory in _name_or_path): those change between attempts, the encoder does not."""
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {key: value for key, value in values.items() if not key.startswith("_") and key not in _BOOKKEEPING_KEYS}


def _device_of(module):
    return next(module.parameters()).device


def _dtype_of(module):
    return next(module.parameters()).dtype


def encode_images(images: Sequence[bytes], resolution: int, vae):
    """Scaled latents [B, C, h, w] of encoded images: the posterior's mean, (mean - shift) * scaling_factor."""
    import torch

    with torch.no_grad():
        batch = pixels(list(images), resolution).to(device=_device_of(vae), dtype=_dtype_of(vae))
        mean = vae.encode(batch).latent_dist.mean
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (mean - shift) * vae.config.scaling_factor


def encode_captions(captions: Sequence[str], text_encoder, tokenizer):
    """Hidden states [B, T, D] of captions, padded and truncated to the tokenizer's model_max_length, as
    StableDiffusionPipeline.encode_prompt computes them."""
    import torch

    device = _device_of(text_encoder)
    inputs = tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    use_mask = getattr(text_encoder.config, "use_attention_mask", False)
    with torch.no_grad():
        return text_encoder(inputs.input_ids.to(device),
                            attention_mask=inputs.attention_mask.to(device) if use_mask else None)[0]


def _as_index(ids):
    import torch

    return ids.to(torch.long).cpu() if isinstance(ids, torch.Tensor) else torch.tensor(list(ids), dtype=torch.long)


class PhaseInputs:
    """The U-Net's inputs for sample ids of one phase: batch(ids) -> {latents [B,C,h,w], encoder_hidden_states
    [B,T,D]}, float32 on the requested device."""

    count: int
    summary: DatasetSummary
    """The dataset's: from the pairs when they were read, else from the cache's manifest."""
    resolution: int
    reused: bool = False
    """True when the inputs were read from a cache an earlier run (or attempt, or resource) computed."""
    uri: Optional[str] = None
    """The cache's s3:// prefix; None when encoding at every batch."""

    def batch(self, ids, device="cpu") -> dict:
        raise NotImplementedError


class OnTheFlyInputs(PhaseInputs):
    """Encodes the batch's images with the VAE and captions with the text encoder at every call."""

    def __init__(self, pairs: ImagePairs, resolution: int, vae, text_encoder, tokenizer):
        self.pairs, self.resolution = pairs, resolution
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        self.count, self.summary = len(pairs), pairs.summary()

    def batch(self, ids, device="cpu") -> dict:
        import torch

        index = _as_index(ids).tolist()
        latents = encode_images([self.pairs.images[i] for i in index], self.resolution, self.vae)
        hidden = encode_captions([self.pairs.captions[i] for i in index], self.text_encoder, self.tokenizer)
        return {"latents": latents.to(device=device, dtype=torch.float32),
                "encoder_hidden_states": hidden.to(device=device, dtype=torch.float32)}


class PrecomputedInputs(PhaseInputs):
    """Latents and hidden states of every sample, held in the stored dtype; batch() gathers and widens them."""

    def __init__(self, latents, hidden_states, summary: DatasetSummary, resolution: int, uri: str, reused: bool,
                 manifest: dict):
        self.latents, self.hidden_states = latents, hidden_states
        self.count, self.summary, self.resolution = len(latents), summary, resolution
        self.uri, self.reused, self.manifest = uri, reused, manifest

    def batch(self, ids, device="cpu") -> dict:
        import torch

        index = _as_index(ids)
        return {"latents": self.latents.index_select(0, index).to(device=device, dtype=torch.float32),
                "encoder_hidden_states": self.hidden_states.index_select(0, index).to(device=device,
                                                                                    dtype=torch.float32)}


def phase_inputs(spec, resolution: int, dataset: ImageDataset, vae, text_encoder, tokenizer, storage, cache: Path,
                 *, is_writer: bool, wait: Callable[[], None], batch_size: int = ENCODE_BATCH) -> PhaseInputs:
    """The phase's inputs: from the precompute cache when spec.precompute enables latents (the writer computes and
    stores them first if no committed cache exists), else encoded at every batch. The dataset's images are read
    only to encode them (by the writer, or at every batch), or for a cache whose manifest predates its summary.

    Every rank calls wait() exactly once after the writer's part, whether or not the cache existed: a rank that
    decided alone to skip the barrier could leave the others waiting for it."""
    precompute = spec.precompute
    if not (precompute and precompute.enabled and precompute.latents):
        return OnTheFlyInputs(dataset.pairs(), resolution, vae, text_encoder, tokenizer)
    encoders = encoders_fingerprint(vae, text_encoder, tokenizer)
    key = cache_key(spec, resolution, dataset.fingerprint, encoders)
    store, bucket = storage.store, storage.prefix.bucket
    prefix = precompute_cache_prefix(key)
    uri = f"s3://{bucket}/{prefix}"
    manifest_raw = store.get(bucket, prefix + MANIFEST_FILE)
    computed = None
    if manifest_raw is None and is_writer:
        computed = _compute(spec, resolution, dataset.pairs(), vae, text_encoder, tokenizer, encoders, storage,
                            cache / "latents" / key, prefix, batch_size)
    wait()
    if computed is not None:
        latents, hidden, manifest = computed
        print(f"kubeforge: latents of {len(latents)} samples at {resolution} px computed into {uri}", flush=True)
        return PrecomputedInputs(latents, hidden, dataset.pairs().summary(), resolution, uri, reused=False,
                                 manifest=manifest)
    raw = manifest_raw or store.get(bucket, prefix + MANIFEST_FILE)
    if raw is None:
        raise WorkloadError(f"{uri}: the latent cache has no {MANIFEST_FILE} after the writing rank finished")
    manifest = json.loads(raw)
    summary = summary_of(manifest)
    if summary is None or dataset.loaded:  # a manifest without the summary: the pairs are its source
        summary = dataset.pairs().summary()
        if manifest.get("count") != summary.count:
            raise WorkloadError(f"{uri} holds {manifest.get('count')} samples but the dataset has {summary.count}; "
                                "delete that prefix to have it recomputed")
    latents, hidden = _download(manifest, bucket, prefix, store, cache / "latents" / key)
    if manifest_raw is not None:
        print(f"kubeforge: reusing the latents of {summary.count} samples at {resolution} px from {uri} (computed "
              f"{manifest.get('created')})", flush=True)
    return PrecomputedInputs(latents, hidden, summary, resolution, uri, reused=manifest_raw is not None,
                             manifest=manifest)


def summary_of(manifest: dict) -> Optional[DatasetSummary]:
    """The dataset summary a manifest holds; None for one written before manifests held firstCaptions."""
    if "firstCaptions" not in manifest:
        return None
    return DatasetSummary(count=manifest["count"], skipped=manifest.get("skipped", {}),
                          first_captions=list(manifest["firstCaptions"]))


def _compute(spec, resolution, pairs, vae, text_encoder, tokenizer, encoders: str, storage, local: Path,
             prefix: str, batch_size: int):
    """Encode every pair, write the shards, upload them, then the manifest (last: only then does the cache exist)."""
    import torch
    from safetensors.torch import save_file

    dtype = getattr(torch, STORED_DTYPES[stored_dtype_name(spec)])
    latents, hidden = [], []
    for start in range(0, len(pairs), batch_size):
        stop = min(len(pairs), start + batch_size)
        latents.append(encode_images(pairs.images[start:stop], resolution, vae).to("cpu", dtype))
        hidden.append(encode_captions(pairs.captions[start:stop], text_encoder, tokenizer).to("cpu", dtype))
    all_latents, all_hidden = torch.cat(latents), torch.cat(hidden)
    local.mkdir(parents=True, exist_ok=True)
    shards, files = [], {}
    for number, start in enumerate(range(0, len(pairs), SHARD_SAMPLES)):
        name = f"shard-{number:05d}.safetensors"
        stop = min(len(pairs), start + SHARD_SAMPLES)
        save_file({"latents": all_latents[start:stop].contiguous(),
                   "encoder_hidden_states": all_hidden[start:stop].contiguous()}, str(local / name))
        shards.append({"file": name, "count": stop - start, "firstId": pairs.ids[start]})
        files[prefix + name] = local / name
    manifest = {"key": prefix.rstrip("/").rsplit("/", 1)[-1],
                "inputs": cache_inputs(spec, resolution, pairs.fingerprint, encoders),
                "count": len(pairs), "dtype": stored_dtype_name(spec), "resolution": resolution,
                "latentShape": list(all_latents.shape[1:]), "hiddenShape": list(all_hidden.shape[1:]),
                "shards": shards, "skipped": pairs.skipped, "firstCaptions": pairs.summary().first_captions,
                "created": utcnow(),
                "createdBy": created_by(storage.context)}
    commit(storage, prefix, files, manifest)
    return all_latents, all_hidden, manifest


def _download(manifest: dict, bucket: str, prefix: str, store, local: Path):
    import torch
    from safetensors.torch import load_file

    paths = shard_paths(manifest["shards"], local, f"s3://{bucket}/{prefix}")
    download_files(store.client, bucket, {prefix + path.name: path for path in paths})
    parts = [load_file(str(path)) for path in paths]
    return (torch.cat([part["latents"] for part in parts]),
            torch.cat([part["encoder_hidden_states"] for part in parts]))
