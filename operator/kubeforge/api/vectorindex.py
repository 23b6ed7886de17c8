"""VectorIndex: chunk and embed documents from the object store into a versioned vector index."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from kubeforge.api.finetune import DATA_URI_PATTERN
from kubeforge.api.meta import DEFAULT_EMPTY_OBJECT, ApiModel
from kubeforge.api.shared import CommonSpec, cel


class SourceSpec(ApiModel):
    uri: str = Field(pattern=DATA_URI_PATTERN)
    """s3:// prefix of the documents (.txt, .md, .jsonl)."""
    glob: str = "**/*"


class ChunkingSpec(ApiModel):
    model_config = cel(("self.overlap < self.size", "chunking.overlap must be smaller than chunking.size"))

    size: int = Field(default=512, ge=16, le=8192)
    """Chunk size in tokens."""
    overlap: int = Field(default=64, ge=0, le=4096)


class EmbeddingSpec(ApiModel):
    model: str = "all-MiniLM-L6-v2"
    """sentence-transformers model name or s3:// directory."""
    batch_size: int = Field(default=64, ge=1)


class VectorIndexSpec(CommonSpec):
    """Keep a vector index in sync with a document prefix."""

    source: SourceSpec
    chunking: ChunkingSpec = Field(default_factory=ChunkingSpec, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    resync_interval: Optional[str] = Field(default=None, pattern=r"^([0-9]+(s|m|h))+$")
    """Re-scan the source this often and embed only new or changed documents."""
