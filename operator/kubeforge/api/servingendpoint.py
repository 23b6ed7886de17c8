"""ServingEndpoint: serve a model (+ LoRA adapters, + optional RAG) behind an OpenAI-compatible API."""

from __future__ import annotations

from enum import Enum
from typing import Optional

from pydantic import Field

from kubeforge.api.finetune import MODEL_URI_PATTERN
from kubeforge.api.meta import DEFAULT_EMPTY_OBJECT, ApiModel
from kubeforge.api.shared import NAME_PATTERN, CommonSpec, cel


class Engine(str, Enum):
    TRANSFORMERS = "transformers"
    VLLM = "vllm"


class ModelSource(ApiModel):
    """The base model to serve: a URI or a FineTune's merged model."""

    model_config = cel(("has(self.uri) != has(self.fineTuneRef)", "set exactly one of model.uri or model.fineTuneRef"))

    uri: Optional[str] = Field(default=None, pattern=MODEL_URI_PATTERN)
    """s3://bucket/dir, models:/<name>/<version> (MLflow registry) or hf://org/name of the model to serve."""
    fine_tune_ref: Optional[str] = Field(default=None, pattern=NAME_PATTERN)
    """Serve the merged model of this FineTune (same namespace)."""


class AdapterRef(ApiModel):
    """A LoRA adapter served next to the base model."""

    name: str = Field(pattern=NAME_PATTERN)
    """Model name clients pass in the OpenAI `model` field."""
    fine_tune_ref: str = Field(pattern=NAME_PATTERN)
    """FineTune (same namespace) whose registered adapter is served."""


class RagSpec(ApiModel):
    """Retrieval-augmented generation: prepend retrieved chunks to each prompt."""

    vector_index_ref: str = Field(pattern=NAME_PATTERN)
    """VectorIndex (same namespace) to retrieve from."""
    top_k: int = Field(default=4, ge=1, le=100)
    """Chunks retrieved per request."""


class Autoscaling(ApiModel):
    """Ray Serve replica autoscaling."""

    model_config = cel(("self.maxReplicas >= self.minReplicas", "maxReplicas must be >= minReplicas"))

    min_replicas: int = Field(default=1, ge=0)
    """Fewest serving replicas; 0 scales to zero when idle."""
    max_replicas: int = Field(default=1, ge=1)
    """Most serving replicas; must be >= minReplicas."""
    target_ongoing_requests: int = Field(default=8, ge=1)
    """In-flight requests per replica the autoscaler aims for."""


class ServingEndpointSpec(CommonSpec):
    """A long-running OpenAI-compatible endpoint on Ray Serve."""

    model: ModelSource
    """The base model to serve."""
    engine: Engine = Engine.TRANSFORMERS
    """Inference engine: transformers (CPU or GPU) or vllm (GPUs only)."""
    adapters: list[AdapterRef] = Field(default_factory=list, max_length=64)
    """LoRA adapters served next to the base model, each under its own model name. Default: none."""
    rag: Optional[RagSpec] = None
    """Retrieval-augmented generation from a VectorIndex. Unset: no retrieval."""
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """Replica autoscaling."""
    max_tokens: int = Field(default=256, ge=1, le=131072)
    """Upper bound on tokens generated per request when the client sets none."""
