"""Registry of the five kinds: names, models, printer columns and how each runs on Ray."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kubeforge.api.evalrun import EvalRunSpec
from kubeforge.api.finetune import FineTuneSpec
from kubeforge.api.meta import ApiModel
from kubeforge.api.servingendpoint import ServingEndpointSpec
from kubeforge.api.status import CommonStatus, EvalRunStatus, ServingStatus, TrainingJobStatus, VectorIndexStatus
from kubeforge.api.trainingjob import TrainingJobSpec
from kubeforge.api.vectorindex import VectorIndexSpec

COMMON_COLUMNS_HEAD = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase"},
]
KSTATUS_COLUMNS = [
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status', "priority": 1},
    {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason', "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
COMMON_COLUMNS_TAIL = [
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts", "description": "Counted retries"},
    *KSTATUS_COLUMNS,
]
PROGRESS_COLUMN = {"name": "Progress", "type": "string", "jsonPath": ".status.progress.summary", "description": "Steps done"}


SPEC_FIELDS_MUTABLE_AFTER_CREATION = ("failurePolicy", "deletionPolicy")
"""The spec fields every one-shot kind accepts changes to once created. Only the operator reads them, afresh at
each decision: failurePolicy (maxRestarts, backoff, hangTimeout, startTimeout, rules) when it watches or retries an
attempt, deletionPolicy when the resource is deleted. Changing them cannot put a running attempt, or the checkpoint
the next attempt resumes from, out of step with the spec. Every other field shapes what the workload computes,
except where a kind says otherwise (KindInfo.also_mutable)."""


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    short_name: str
    spec_model: type[ApiModel]
    workload: str
    """Python module run as the Ray entrypoint."""
    shape: Literal["RayJob", "RayService"]
    extra_columns: tuple[dict, ...] = field(default_factory=tuple)
    status_model: type[ApiModel] = CommonStatus
    one_shot: bool = False
    also_mutable: tuple[str, ...] = ()
    """Spec fields this one-shot kind accepts changes to besides SPEC_FIELDS_MUTABLE_AFTER_CREATION, taking effect
    at the next attempt. TrainingJob: resources, so a job that lost nodes resumes on fewer workers: globalBatchSize
    is fixed, gradient accumulation absorbs the worker count, and the sampler re-shards from the checkpoint, so
    the optimisation is the same (tests/integration/test_pretrain_workload.py measures it)."""
    """Runs once to completion (TrainingJob, FineTune, EvalRun): its spec is immutable after creation except
    SPEC_FIELDS_MUTABLE_AFTER_CREATION, so a retry never resumes work done under another spec. Long-running kinds
    (VectorIndex, ServingEndpoint) reconcile spec changes instead."""

    @property
    def mutable_after_creation(self) -> tuple[str, ...]:
        return SPEC_FIELDS_MUTABLE_AFTER_CREATION + self.also_mutable

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def printer_columns(self) -> list[dict]:
        tail = COMMON_COLUMNS_TAIL if self.shape == "RayJob" else KSTATUS_COLUMNS  # no attempts, no restarts
        return [*COMMON_COLUMNS_HEAD, *self.extra_columns, *tail]


KINDS: tuple[KindInfo, ...] = (
    KindInfo("TrainingJob", "trainingjobs", "tj", TrainingJobSpec, "kubeforge_workloads.pretrain", "RayJob",
             (PROGRESS_COLUMN,
              {"name": "Goodput", "type": "number", "jsonPath": ".status.goodput.ratio", "priority": 1}),
             status_model=TrainingJobStatus, one_shot=True, also_mutable=("resources",)),
    KindInfo("FineTune", "finetunes", "ft", FineTuneSpec, "kubeforge_workloads.finetune", "RayJob",
             (PROGRESS_COLUMN,
              {"name": "Model", "type": "string", "jsonPath": ".status.output.modelUri", "priority": 1}),
             one_shot=True),
    KindInfo("VectorIndex", "vectorindexes", "vi", VectorIndexSpec, "kubeforge_workloads.index", "RayJob",
             (PROGRESS_COLUMN,
              {"name": "Version", "type": "integer", "jsonPath": ".status.currentVersion"},
              {"name": "Chunks", "type": "integer", "jsonPath": ".status.chunks", "priority": 1}),
             status_model=VectorIndexStatus),
    KindInfo("ServingEndpoint", "servingendpoints", "se", ServingEndpointSpec, "kubeforge_workloads.serve",
             "RayService", ({"name": "URL", "type": "string", "jsonPath": ".status.url"},
                            {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas.ready",
                             "description": "Serving replicas ready"}),
             status_model=ServingStatus),
    KindInfo("EvalRun", "evalruns", "er", EvalRunSpec, "kubeforge_workloads.evaluate", "RayJob",
             (PROGRESS_COLUMN,
              {"name": "Passed", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Passed")].status',
               "description": "Whether every gate condition held"},
              {"name": "Score", "type": "number", "jsonPath": ".status.summary.judgeScore",
               "description": "Weighted judge score, 0-3"},
              {"name": "Failed-Rows", "type": "integer", "jsonPath": ".status.rows.failed", "priority": 1}),
             status_model=EvalRunStatus, one_shot=True),
)


def kind_info(kind: str) -> KindInfo:
    for info in KINDS:
        if kind in (info.kind, info.plural, info.short_name, info.singular):
            return info
    raise KeyError(f"unknown Kubeforge kind {kind!r}")
