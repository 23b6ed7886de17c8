"""/v1/embeddings: a sentence-transformers model behind OpenAI's embeddings API (float or base64 vectors, token
usage), loaded the way VectorIndex builds load theirs, so an endpoint embeds queries as its index embedded chunks."""

from __future__ import annotations

import base64
import threading
from typing import Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from kubeforge.api.serveapp import ServedEmbeddings
from kubeforge_workloads.index.embedding import encode, load_model
from kubeforge_workloads.serve.protocol import ApiError

MAX_INPUTS = 2048
"""OpenAI's limit on inputs per request."""
BATCH_SIZE = 64


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(default=None, ge=1)

    def texts(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input]
        if any(not isinstance(item, str) for item in self.input):
            raise ApiError(400, "input as token ids is not supported here: send strings", param="input")
        return list(self.input)


class Embedder:
    """One model per replica; encoding runs one request at a time (the model is not re-entrant on CPU threads)."""

    def __init__(self, config: ServedEmbeddings, store=None):
        self.config = config
        self.model = load_model(config.model, "auto", store)
        self.dims = int(self.model.get_embedding_dimension())
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """(vectors, prompt tokens) for `texts`."""
        with self._lock:
            vectors = encode(self.model, texts, BATCH_SIZE, self.config.normalize)
            tokens = sum(len(ids) for ids in self.model.tokenizer(texts, truncation=True)["input_ids"])
        return vectors, tokens

    def respond(self, request: EmbeddingRequest) -> dict:
        texts = request.texts()
        if not texts or len(texts) > MAX_INPUTS:
            raise ApiError(400, f"input must hold 1 to {MAX_INPUTS} strings, not {len(texts)}", param="input")
        if any(not text for text in texts):
            raise ApiError(400, "input strings must not be empty", param="input")
        if request.dimensions is not None and request.dimensions != self.dims:
            raise ApiError(400, f"{self.config.name} embeds in {self.dims} dimensions and cannot shorten them; "
                                "omit dimensions", param="dimensions")
        vectors, tokens = self.embed(texts)
        data = [{"object": "embedding", "index": number, "embedding": _encoded(vector, request.encoding_format)}
                for number, vector in enumerate(vectors)]
        return {"object": "list", "data": data, "model": self.config.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _encoded(vector: np.ndarray, encoding_format: str):
    if encoding_format == "base64":  # little-endian float32, as OpenAI's client decodes it
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return [float(value) for value in vector]


def open_embedder(config, store=None) -> Optional[Embedder]:
    return Embedder(config.embeddings, store) if config.embeddings else None
