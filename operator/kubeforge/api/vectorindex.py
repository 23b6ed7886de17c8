"""VectorIndex: chunk and embed documents from the object store into a versioned vector index."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from kubeforge.api.finetune import DATA_URI_PATTERN
from kubeforge.api.meta import DEFAULT_EMPTY_OBJECT, ApiModel
from kubeforge.api.shared import CommonSpec, cel


class SourceSpec(ApiModel):
    """The documents to index."""

    uri: str = Field(pattern=DATA_URI_PATTERN)
    """s3:// prefix of the documents (.txt, .md, .jsonl)."""
    glob: str = "**/*"
    """Glob, relative to uri, selecting which documents to index."""


class ChunkingSpec(ApiModel):
    """How documents are split before embedding."""

    model_config = cel(("self.overlap < self.size", "chunking.overlap must be smaller than chunking.size"))

    size: int = Field(default=512, ge=16, le=8192)
    """Chunk size in tokens."""
    overlap: int = Field(default=64, ge=0, le=4096)
    """Tokens shared by consecutive chunks; must be smaller than size."""


class EmbeddingSpec(ApiModel):
    """The embedding model."""

    model: str = "all-MiniLM-L6-v2"
    """sentence-transformers model name or s3:// directory."""
    batch_size: int = Field(default=64, ge=1)
    """Chunks embedded per forward pass."""


class VectorIndexSpec(CommonSpec):
    """Keep a vector index in sync with a document prefix."""

    source: SourceSpec
    """The documents to index."""
    chunking: ChunkingSpec = Field(default_factory=ChunkingSpec, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """How documents are split."""
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """The embedding model."""
    resync_interval: Optional[str] = Field(default=None, pattern=r"^([0-9]+(s|m|h))+$")
    """Duration (e.g. 30m, 1h): re-scan the source this often and embed only new or changed documents. Unset: index
    once."""
