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
    model_config = cel(("has(self.uri) != has(self.fineTuneRef)", "set exactly one of model.uri or model.fineTuneRef"))

    uri: Optional[str] = Field(default=None, pattern=MODEL_URI_PATTERN)
    fine_tune_ref: Optional[str] = Field(default=None, pattern=NAME_PATTERN)
    """Serve the merged model of this FineTune (same namespace)."""


class AdapterRef(ApiModel):
    name: str = Field(pattern=NAME_PATTERN)
    """Model name clients pass in the OpenAI `model` field."""
    fine_tune_ref: str = Field(pattern=NAME_PATTERN)


class RagSpec(ApiModel):
    vector_index_ref: str = Field(pattern=NAME_PATTERN)
    top_k: int = Field(default=4, ge=1, le=100)


class Autoscaling(ApiModel):
    model_config = cel(("self.maxReplicas >= self.minReplicas", "maxReplicas must be >= minReplicas"))

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: int = Field(default=8, ge=1)


class ServingEndpointSpec(CommonSpec):
    """A long-running OpenAI-compatible endpoint on Ray Serve."""

    model: ModelSource
    engine: Engine = Engine.TRANSFORMERS
    adapters: list[AdapterRef] = Field(default_factory=list, max_length=64)
    rag: Optional[RagSpec] = None
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    max_tokens: int = Field(default=256, ge=1, le=131072)
