"""ServingEndpoint: serve a model (+ LoRA adapters, prompt templates, optional RAG) behind an OpenAI-compatible API."""

from __future__ import annotations

from enum import Enum
from typing import Any, Optional

from pydantic import Field

from kubeforge.api.finetune import MODEL_URI_PATTERN
from kubeforge.api.meta import DEFAULT_EMPTY_OBJECT, ApiModel
from kubeforge.api.shared import NAME_PATTERN, CommonSpec, cel

SERVED_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"


class Engine(str, Enum):
    AUTO = "auto"
    """vLLM when GPUs are requested, transformers on CPU."""
    TRANSFORMERS = "transformers"
    VLLM = "vllm"


class RegisteredModel(ApiModel):
    name: str = Field(min_length=1, max_length=256)
    """MLflow registered model name."""
    version: str = Field(pattern=r"^[0-9]+$")
    """Model version in the registry."""


class ModelSource(ApiModel):
    """The base model to serve: a URI, a FineTune's merged (or fully trained) model, or an MLflow registry entry."""

    model_config = cel((
        "(has(self.uri) ? 1 : 0) + (has(self.fineTuneRef) ? 1 : 0) + (has(self.registeredModel) ? 1 : 0) == 1",
        "set exactly one of model.uri, model.fineTuneRef or model.registeredModel"))

    uri: Optional[str] = Field(default=None, pattern=MODEL_URI_PATTERN)
    """s3://bucket/dir, models:/<name>/<version> (MLflow registry) or hf://org/name of the model to serve."""
    fine_tune_ref: Optional[str] = Field(default=None, pattern=NAME_PATTERN)
    """Serve the merged (or fully trained) model of this FineTune (same namespace)."""
    registered_model: Optional[RegisteredModel] = None
    """Serve this MLflow registry version; the same as uri models:/<name>/<version>."""


class EngineSettings(ApiModel):
    """Engine knobs, named as vLLM names them; transformers honours maxModelLen, dtype and maxNumSeqs."""

    max_model_len: Optional[int] = Field(default=None, ge=16, le=1048576)
    """Context length: prompt plus generated tokens. Default: the model's."""
    dtype: str = Field(default="auto", pattern=r"^(auto|float32|float16|bfloat16)$")
    """Weights dtype; auto: bfloat16 on GPUs that have it, float32 on CPU."""
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    """vLLM: fraction of GPU memory for weights and KV cache."""
    max_num_seqs: int = Field(default=8, ge=1, le=4096)
    """Sequences batched together per replica (vLLM's continuous batch, transformers' dynamic batch)."""
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    """vLLM: GPUs one replica shards the model over."""


class AdapterRef(ApiModel):
    """A LoRA adapter served next to the base model."""

    model_config = cel(("has(self.uri) != has(self.fineTuneRef)",
                        "set exactly one of uri or fineTuneRef on each adapter"))

    name: str = Field(pattern=SERVED_NAME_PATTERN, max_length=128)
    """Model name clients pass in the OpenAI `model` field."""
    fine_tune_ref: Optional[str] = Field(default=None, pattern=NAME_PATTERN)
    """FineTune (same namespace) whose registered adapter is served."""
    uri: Optional[str] = Field(default=None, pattern=MODEL_URI_PATTERN)
    """The adapter's files (s3://, models:/ or hf://)."""


class PromptTemplate(ApiModel):
    """A prompt served as a model of its own (`<endpoint>:<name>`): the client's message fills `{input}`."""

    name: str = Field(pattern=SERVED_NAME_PATTERN, max_length=128)
    """Called as model `<endpoint>:<name>`, or at /v1/templates/<name>."""
    template: str = Field(min_length=1, max_length=65536)
    """Python format string; `{input}` is the request's last user message, other fields come from `parameters`
    or the request's `template_args`."""
    system: Optional[str] = Field(default=None, max_length=65536)
    """System prompt put before the filled template."""
    parameters: dict[str, Any] = Field(default_factory=dict, json_schema_extra={
        "x-kubernetes-preserve-unknown-fields": True})
    """Defaults for the template's other fields and for sampling (temperature, max_tokens, ...)."""


class RagSpec(ApiModel):
    """Retrieval-augmented generation: retrieved chunks are put into each prompt."""

    vector_index_ref: str = Field(pattern=NAME_PATTERN)
    """VectorIndex (same namespace) to retrieve from; its current version is served."""
    top_k: int = Field(default=4, ge=1, le=100)
    """Chunks retrieved per request."""
    prompt_template: Optional[str] = Field(default=None, pattern=SERVED_NAME_PATTERN)
    """promptTemplates entry that formats the answer prompt; it gets `{context}` and `{input}`. Default: a
    built-in "answer from this context" prompt."""
    include_context: bool = True
    """Return the retrieved chunks (id, score, source) in the response's `context` field."""


class Autoscaling(ApiModel):
    """Ray Serve replica autoscaling."""

    model_config = cel(("self.maxReplicas >= self.minReplicas", "maxReplicas must be >= minReplicas"))

    min_replicas: int = Field(default=1, ge=0)
    """Fewest serving replicas; 0 scales to zero when idle."""
    max_replicas: int = Field(default=1, ge=1)
    """Most serving replicas; must be >= minReplicas."""
    target_ongoing_requests: int = Field(default=8, ge=1)
    """In-flight requests per replica the autoscaler aims for."""


class SecretKeyRef(ApiModel):
    name: str = Field(pattern=NAME_PATTERN, max_length=253)
    """Secret in the endpoint's namespace."""
    key: str = Field(default="api-keys", pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)
    """Key holding the accepted API keys, one per line."""


class Auth(ApiModel):
    api_key_secret_ref: SecretKeyRef
    """Requests must send `Authorization: Bearer <key>` with one of this Secret's keys."""


class EmbeddingsSpec(ApiModel):
    """A sentence-embedding model served at /v1/embeddings (OpenAI's embeddings API) next to the chat model."""

    name: str = Field(default="embeddings", pattern=SERVED_NAME_PATTERN, max_length=128)
    """The model name clients pass. Default: embeddings."""
    model: str = Field(default="all-MiniLM-L6-v2", min_length=1, max_length=512)
    """A sentence-transformers model: all-MiniLM-L6-v2 (bundled), an s3:// directory, or a hub name where the
    hub is reachable. Default: all-MiniLM-L6-v2."""
    normalize: bool = True
    """Unit-length vectors, so a dot product is the cosine similarity. Default: true."""


class TracingSpec(ApiModel):
    """Sampled request traces in MLflow, in the endpoint's experiment (spec.mlflow.experiment)."""

    sample_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Fraction of completion requests recorded as MLflow traces: the model, the messages or prompt, the template,
    sampling parameters, the answers, token counts, latency and retrieved chunk ids. Request headers (the API key)
    are never recorded. 0 records none."""


class ServingEndpointSpec(CommonSpec):
    """A long-running OpenAI-compatible endpoint on Ray Serve."""

    model: ModelSource
    """The base model to serve."""
    engine: Engine = Engine.AUTO
    """Inference engine: auto (vllm on GPUs, transformers on CPU), transformers, or vllm (GPUs only)."""
    engine_settings: EngineSettings = Field(default_factory=EngineSettings, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """Context length, dtype, batch size and GPU sharding."""
    adapters: list[AdapterRef] = Field(default_factory=list, max_length=64)
    """LoRA adapters served next to the base model, each under its own model name. Default: none."""
    prompt_templates: list[PromptTemplate] = Field(default_factory=list, max_length=64)
    """Prompts served as models of their own. Default: none."""
    rag: Optional[RagSpec] = None
    """Retrieval-augmented generation from a VectorIndex. Unset: no retrieval."""
    embeddings: Optional[EmbeddingsSpec] = None
    """An embedding model served at /v1/embeddings. Unset: no embeddings route."""
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """Replica autoscaling."""
    tracing: Optional[TracingSpec] = None
    """Sampled request traces in MLflow. Unset: none."""
    auth: Optional[Auth] = None
    """API keys. Unset: the endpoint accepts every request (keep it off public networks)."""
    max_tokens: int = Field(default=256, ge=1, le=131072)
    """Upper bound on tokens generated per request when the client sets none."""
