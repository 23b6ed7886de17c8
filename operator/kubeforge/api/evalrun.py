"""EvalRun: retrieval metrics over VectorIndexes, answers from a ServingEndpoint graded by an LLM judge on a 0-3
scale, results in MLflow, and a gate that can fail the run (a verdict, not an infrastructure failure).

Metric names (MLflow metrics, status.summary, gate.metric):
  judge/score                          weighted judge score, 0-3 (the criteria's weights, normalised)
  judge/<criterion>                    mean score of one criterion, 0-3
  retrieval/<vectorIndex>/<metric>@<k> e.g. retrieval/docs-small/ndcg@5 (metric: precision, recall, ndcg, mrr,
                                       hit_rate); with one index, retrieval/<metric>@<k> names it too
  rows/failedFraction                  rows whose generation or judging failed, over all rows
  latency/p50Seconds, latency/p95Seconds  answer latency of the endpoint
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

from pydantic import Field

from kubeforge.api.finetune import DATA_URI_PATTERN
from kubeforge.api.meta import DEFAULT_EMPTY_OBJECT, ApiModel
from kubeforge.api.shared import NAME_PATTERN, BatchSpec, cel

JUDGE_SCALE = (0, 3)
BUILTIN_CRITERIA = ("correctness", "comprehensiveness", "readability", "relevance")
"""Criteria with a built-in rubric and few-shot examples (kubeforge_workloads.evaluate.rubrics); the first three,
weighted 60/20/20, are the default."""
DEFAULT_WEIGHTS = {"correctness": 0.6, "comprehensiveness": 0.2, "readability": 0.2}
SERVED_MODEL_PATTERN = r"^[a-z0-9]([-a-z0-9_.:]*[a-z0-9])?$"
"""A name in a ServingEndpoint's status.models: the base, an adapter, or <endpoint>:<prompt template>."""


class EvalDataset(ApiModel):
    """The question set."""

    uri: str = Field(pattern=DATA_URI_PATTERN)
    """s3:// URI of a JSONL file, one row per question: {id, question, expected_answer?, relevant_doc_ids?};
    relevant_doc_ids is a list of document ids, or {doc_id: grade} for graded relevance."""


class EvalTarget(ApiModel):
    """What is evaluated: answers of a ServingEndpoint, retrieval of VectorIndexes, or both."""

    model_config = cel(("has(self.endpointRef) || (has(self.vectorIndexRefs) && size(self.vectorIndexRefs) > 0)",
                        "set target.endpointRef, target.vectorIndexRefs, or both"),
                       ("!has(self.model) || has(self.endpointRef)", "target.model needs target.endpointRef"))

    endpoint_ref: Optional[str] = Field(default=None, pattern=NAME_PATTERN, max_length=253)
    """ServingEndpoint (same namespace) whose answers are generated and judged."""
    model: Optional[str] = Field(default=None, pattern=SERVED_MODEL_PATTERN, max_length=128)
    """Which of the endpoint's models answers (its status.models: base, an adapter, a prompt template).
    Default: the endpoint's first model."""
    vector_index_refs: list[Annotated[str, Field(pattern=NAME_PATTERN, max_length=253)]] = Field(
        default_factory=list, max_length=8, json_schema_extra={"x-kubernetes-list-type": "set"})
    """VectorIndexes (same namespace) whose retrieval is measured on the same questions; several compare chunk
    sizes or embedders side by side."""


class RetrievalMetric(str, Enum):
    PRECISION = "precision"
    RECALL = "recall"
    NDCG = "ndcg"
    MRR = "mrr"
    HIT_RATE = "hit_rate"


class RetrievalSpec(ApiModel):
    k: list[Annotated[int, Field(ge=1, le=100)]] = Field(default_factory=lambda: [1, 3, 5, 10], min_length=1,
                                                         max_length=8, json_schema_extra={"x-kubernetes-list-type": "set"})
    """Cut-off ranks; each index is queried once for the largest."""
    metrics: list[RetrievalMetric] = Field(default_factory=lambda: list(RetrievalMetric), min_length=1,
                                           json_schema_extra={"x-kubernetes-list-type": "set"})
    """Metrics at every k (trec_eval conventions, see the README)."""


class ApiKeySecretRef(ApiModel):
    name: str = Field(pattern=NAME_PATTERN, max_length=253)
    """Secret in the EvalRun's namespace."""
    key: str = Field(default="api-key", pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)
    """Key holding the API key."""


class OpenAICompatible(ApiModel):
    """A judge outside the cluster's ServingEndpoints: any OpenAI-compatible chat-completions API."""

    base_url: str = Field(pattern=r"^https?://", max_length=2048)
    """Base URL ending before /chat/completions, e.g. https://api.example.com/v1."""
    model: str = Field(min_length=1, max_length=256)
    """The model name the API expects."""
    api_key_secret_ref: Optional[ApiKeySecretRef] = None
    """Secret holding the API key sent as a bearer token. Unset: no key is sent."""


class JudgeExample(ApiModel):
    """A few-shot example: what a given score looks like."""

    score: int = Field(ge=JUDGE_SCALE[0], le=JUDGE_SCALE[1])
    """The score this example earns, 0-3."""
    question: str = Field(min_length=1)
    """The example's question."""
    answer: str
    """The example's answer."""
    reasoning: str = Field(min_length=1)
    """Why the answer earns the score."""


class JudgeCriterion(ApiModel):
    """One graded aspect of an answer."""

    model_config = cel(("has(self.rubric) || self.name in " + repr(list(BUILTIN_CRITERIA)).replace("'", '"'),
                        "criteria without a built-in rubric (" + ", ".join(BUILTIN_CRITERIA) + ") need a rubric"))

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=63)
    """Names the metric judge/<name>; correctness, comprehensiveness, readability and relevance are built in."""
    weight: float = Field(gt=0, le=1)
    """Relative weight in judge/score; weights are normalised to sum 1."""
    rubric: Optional[str] = Field(default=None, min_length=1)
    """What each score 0-3 means. Default: the built-in rubric of a built-in criterion."""
    examples: list[JudgeExample] = Field(default_factory=list)
    """Few-shot examples. Default for a built-in criterion: one per score."""


class JudgeSpec(ApiModel):
    """LLM-as-judge: each answer graded per criterion on a 0-3 integer scale, replies parsed strictly as JSON."""

    model_config = cel(("has(self.endpointRef) != has(self.openaiCompatible)",
                        "set exactly one of judge.endpointRef or judge.openaiCompatible"),
                       ("!has(self.model) || has(self.endpointRef)",
                        "judge.model picks one of judge.endpointRef's models; set openaiCompatible.model instead"))

    endpoint_ref: Optional[str] = Field(default=None, pattern=NAME_PATTERN, max_length=253)
    """ServingEndpoint (same namespace) that grades."""
    model: Optional[str] = Field(default=None, pattern=SERVED_MODEL_PATTERN, max_length=128)
    """Which of judge.endpointRef's models grades. Default: its first."""
    openai_compatible: Optional[OpenAICompatible] = None
    temperature: float = Field(default=0.1, ge=0, le=2)
    """Sampling temperature of the judge. Default: 0.1."""
    scale: str = Field(default="0-3", pattern=r"^0-3$")
    """Integer score scale (clearer to a judge than 1-10). Default: 0-3."""
    criteria: list[JudgeCriterion] = Field(default_factory=list, max_length=16)
    """Default: correctness 0.6, comprehensiveness 0.2, readability 0.2, each with its built-in rubric and
    one few-shot example per score."""
    max_failed_fraction: float = Field(default=0.05, ge=0, le=1)
    """The gate fails when more than this fraction of rows could not be answered or judged. Default: 0.05."""
    max_reply_attempts: int = Field(default=3, ge=1, le=10)
    """Tries per row and criterion when the judge's reply is not valid JSON with an in-range score. Default: 3."""


class GateOp(str, Enum):
    GE = ">="
    LE = "<="
    GT = ">"
    LT = "<"


class GateCondition(ApiModel):
    """metric op value, e.g. judge/score >= 2.0."""

    metric: str = Field(pattern=r"^(judge|retrieval|rows|latency)/[-a-zA-Z0-9_./@]+$", max_length=256)
    """A metric name (see kubectl explain evalrun.spec, or the README): judge/score, retrieval/ndcg@5, …"""
    op: GateOp = GateOp.GE
    """Comparison of the metric with value. Default: >=."""
    value: float
    """Threshold."""


class EvalRunSpec(BatchSpec):
    """Evaluate answers and retrieval on a question set and pass or fail a gate."""

    dataset: EvalDataset
    target: EvalTarget
    retrieval: RetrievalSpec = Field(default_factory=RetrievalSpec, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """Retrieval metrics of target.vectorIndexRefs (ignored without them)."""
    judge: Optional[JudgeSpec] = None
    """Grade target.endpointRef's answers with an LLM. Unset: answers are generated and timed, not graded."""
    gate: list[GateCondition] = Field(default_factory=list, max_length=32)
    """Every condition must hold for condition Passed=True; one that does not ends the run Failed with reason
    GateFailed (no retry). Empty: the run passes when it completes."""
    concurrency: int = Field(default=4, ge=1, le=64)
    """Requests in flight at once to the endpoint and to the judge. Default: 4."""
    max_tokens: int = Field(default=256, ge=1, le=8192)
    """Largest answer generated per question, in tokens. Default: 256."""
