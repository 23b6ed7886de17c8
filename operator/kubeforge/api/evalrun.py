"""EvalRun: evaluate an endpoint or model (retrieval metrics, LLM-as-judge, latency) with a gate."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from kubeforge.api.finetune import DATA_URI_PATTERN, MODEL_URI_PATTERN
from kubeforge.api.meta import ApiModel
from kubeforge.api.shared import NAME_PATTERN, BatchSpec, cel


class EvalTarget(ApiModel):
    """What is evaluated: a ServingEndpoint or a model."""

    model_config = cel(("has(self.endpointRef) != has(self.modelUri)", "set exactly one of target.endpointRef or target.modelUri"))

    endpoint_ref: Optional[str] = Field(default=None, pattern=NAME_PATTERN)
    """ServingEndpoint (same namespace) to evaluate."""
    model_uri: Optional[str] = Field(default=None, pattern=MODEL_URI_PATTERN)
    """Model to load and evaluate directly: s3://, models:/<name>/<version> (MLflow registry) or hf://."""


class JudgeSpec(ApiModel):
    """LLM-as-judge grading; the weights combine into judge/score."""

    endpoint_ref: str = Field(pattern=NAME_PATTERN)
    """ServingEndpoint that grades answers on a 0-3 scale."""
    correctness_weight: float = Field(default=0.6, ge=0, le=1)
    """Weight (0 to 1) of the correctness grade in judge/score."""
    comprehensiveness_weight: float = Field(default=0.2, ge=0, le=1)
    """Weight (0 to 1) of the comprehensiveness grade in judge/score."""
    readability_weight: float = Field(default=0.2, ge=0, le=1)
    """Weight (0 to 1) of the readability grade in judge/score."""


class Gate(ApiModel):
    """A pass condition: the EvalRun passes only if every gate holds."""

    metric: str = Field(min_length=1)
    """Metric name, e.g. judge/score or retrieval/ndcg@5."""
    min_value: float
    """The metric must be at least this value."""


class EvalRunSpec(BatchSpec):
    """Score a target against a dataset and pass or fail a gate."""

    target: EvalTarget
    """What is evaluated."""
    dataset_uri: str = Field(pattern=DATA_URI_PATTERN)
    """s3:// URI of a JSONL file of questions with reference answers (and relevant documents for retrieval)."""
    k: int = Field(default=5, ge=1, le=100)
    """Cut-off rank for the retrieval metrics (precision@k, recall@k, nDCG@k)."""
    judge: Optional[JudgeSpec] = None
    """LLM-as-judge grading. Unset: no judge metrics."""
    gates: list[Gate] = Field(default_factory=list)
    """Conditions the metrics must meet for status.output.passed to be true. Default: none (always passes)."""
