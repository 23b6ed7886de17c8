"""EvalRun: evaluate an endpoint or model (retrieval metrics, LLM-as-judge, latency) with a gate."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from kubeforge.api.finetune import DATA_URI_PATTERN, MODEL_URI_PATTERN
from kubeforge.api.meta import ApiModel
from kubeforge.api.shared import NAME_PATTERN, CommonSpec, cel


class EvalTarget(ApiModel):
    model_config = cel(("has(self.endpointRef) != has(self.modelUri)", "set exactly one of target.endpointRef or target.modelUri"))

    endpoint_ref: Optional[str] = Field(default=None, pattern=NAME_PATTERN)
    model_uri: Optional[str] = Field(default=None, pattern=MODEL_URI_PATTERN)


class JudgeSpec(ApiModel):
    endpoint_ref: str = Field(pattern=NAME_PATTERN)
    """ServingEndpoint that grades answers on a 0-3 scale."""
    correctness_weight: float = Field(default=0.6, ge=0, le=1)
    comprehensiveness_weight: float = Field(default=0.2, ge=0, le=1)
    readability_weight: float = Field(default=0.2, ge=0, le=1)


class Gate(ApiModel):
    metric: str = Field(min_length=1)
    """Metric name, e.g. judge/score or retrieval/ndcg@5."""
    min_value: float


class EvalRunSpec(CommonSpec):
    """Score a target against a dataset and pass or fail a gate."""

    target: EvalTarget
    dataset_uri: str = Field(pattern=DATA_URI_PATTERN)
    k: int = Field(default=5, ge=1, le=100)
    judge: Optional[JudgeSpec] = None
    gates: list[Gate] = Field(default_factory=list)
