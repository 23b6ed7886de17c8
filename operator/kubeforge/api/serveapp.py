"""The contract between operator and Serve application: what a ServingEndpoint's RayService passes to
`kubeforge_workloads.serve` as the Serve application's `args`.

The operator resolves every reference (FineTune, VectorIndex, registry entry) to a location before rendering,
so the application never reads the Kubernetes API; the API keys themselves travel only as an environment
variable filled from the user's Secret by the kubelet (`api_keys_env`), never in this document.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

IMPORT_PATH = "kubeforge_workloads.serve.app:build"
API_KEYS_ENV = "KUBEFORGE_API_KEYS"
"""Environment variable the replicas read the accepted API keys from (one per line)."""


class ServedModel(BaseModel):
    name: str
    """The OpenAI `model` name clients pass."""
    uri: str
    """s3://, models:/ or hf:// location of the weights (for an adapter: of the adapter's files)."""


class ServedTemplate(BaseModel):
    name: str
    """Served as model `<endpoint>:<name>`."""
    template: str
    system: Optional[str] = None
    parameters: dict[str, Any] = {}


class ServedRetrieval(BaseModel):
    index: str
    """s3://bucket/prefix of the VectorIndex (what `kubeforge_workloads.index.query.open_index` opens)."""
    version: int
    """The index version the operator resolved (the VectorIndex's status.currentVersion)."""
    top_k: int = 4
    prompt_template: Optional[str] = None
    """A `templates` entry with `{context}` and `{input}`; None: the built-in answer-from-context prompt."""
    include_context: bool = True


class ServedEmbeddings(BaseModel):
    name: str
    """The OpenAI `model` name of /v1/embeddings."""
    model: str
    """What kubeforge_workloads.index.embedding.load_model loads: a bundled name, s3:// or a hub name."""
    normalize: bool = True


class ServedTracing(BaseModel):
    experiment: str
    """The MLflow experiment the traces go to (the endpoint's)."""
    sample_rate: float = Field(ge=0.0, le=1.0)


class EngineConfig(BaseModel):
    kind: Literal["transformers", "vllm"]
    max_model_len: Optional[int] = None
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 8
    tensor_parallel_size: int = 1


class ServeAppConfig(BaseModel):
    """Validated by the application's builder from the Serve config's `args`."""

    endpoint: str
    """namespace/name of the ServingEndpoint, for logs and metrics."""
    base: ServedModel
    """The base model; its `name` is the endpoint's name."""
    engine: EngineConfig
    max_tokens: int = 256
    """Tokens generated when a request sets no max_tokens."""
    adapters: list[ServedModel] = []
    templates: list[ServedTemplate] = []
    rag: Optional[ServedRetrieval] = None
    embeddings: Optional[ServedEmbeddings] = None
    tracing: Optional[ServedTracing] = None
    """Sampled request traces in MLflow; None: none."""
    api_keys_env: Optional[str] = None
    """Name of the environment variable holding the accepted keys; None: no authentication."""
    gpus_per_replica: int = Field(default=0, ge=0)
