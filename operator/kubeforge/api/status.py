"""The status contract shared by every kind (DESIGN.md §4): kstatus conditions, attempts, progress."""

from __future__ import annotations

from enum import Enum
from typing import Any, Optional

from pydantic import Field

from kubeforge.api.meta import ApiModel
from kubeforge.api.shared import FailureReason
from kubeforge.api.goodput import Goodput


class Phase(str, Enum):
    PENDING = "Pending"
    WAITING = "Waiting"
    RUNNING = "Running"
    RETRYING = "Retrying"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    READY = "Ready"
    DEPLOYING = "Deploying"
    """A ServingEndpoint whose RayService is not serving yet."""


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})


class ConditionType(str, Enum):
    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"


class Reason(str, Enum):
    """Machine-readable reasons on conditions; one vocabulary for every kind."""

    CREATED = "Created"
    LAUNCHING = "Launching"
    STARTING = "Starting"
    SUSPENDED = "Suspended"
    RUNNING = "Running"
    RETRYING = "Retrying"
    BACKING_OFF = "BackingOff"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    INVALID_SPEC = "InvalidSpec"
    WAITING_FOR_DEPENDENCY = "WaitingForDependency"
    DEPENDENCY_FAILED = "DependencyFailed"
    """A dependency ended Failed (or cannot give what this resource needs from it); re-checked when it changes."""
    SERVING = "Serving"
    GATE_PASSED = "GatePassed"
    GATE_FAILED = "GateFailed"
    """An EvalRun's gate did not hold: a verdict on the evaluated model, not an infrastructure failure (no retry)."""


class Condition(ApiModel):
    """A kstatus-style condition."""

    type: str
    status: str = Field(pattern="^(True|False|Unknown)$")
    reason: str = ""
    message: str = ""
    last_transition_time: Optional[str] = None
    observed_generation: Optional[int] = None


class Attempt(ApiModel):
    """One execution of the workload: one RayJob."""

    number: int = Field(ge=1)
    ray_job: str
    """Name of the RayJob that ran this attempt."""
    start_time: Optional[str] = None
    end_time: Optional[str] = None
    outcome: Optional[str] = None
    """Running, Succeeded or Failed."""
    reason: Optional[FailureReason] = None
    """Classification of the failure."""
    message: Optional[str] = None
    exit_code: Optional[int] = None
    step_reached: Optional[int] = None
    resumed_from: Optional[str] = None
    """Checkpoint URI this attempt resumed from."""
    counted: Optional[bool] = None
    """False when a rule said Ignore: the attempt does not count against maxRestarts."""
    generation: Optional[int] = None
    """metadata.generation of the resource when this attempt was launched (the spec it ran with)."""
    run: Optional[int] = None
    """The run this attempt belongs to (kinds that run again)."""
    waiting_since: Optional[str] = None
    """While the Ray job has not started running: when the current wait began (startTimeout counts from it)."""
    progress_mark: Optional[str] = None
    """The workload phase and step last seen while the Ray job runs (hang detection)."""
    progress_time: Optional[str] = None
    """When the operator first saw progressMark; hangTimeout counts from it."""


class ProgressStatus(ApiModel):
    """The latest heartbeat of the workload, copied from progress.json."""

    attempt: Optional[int] = None
    """Attempt that wrote this heartbeat."""
    phase: Optional[str] = None
    step: Optional[int] = None
    total_steps: Optional[int] = None
    epoch: Optional[float] = None
    loss: Optional[float] = None
    tokens_per_second: Optional[float] = None
    last_checkpoint: Optional[str] = None
    updated_at: Optional[str] = None
    eta_seconds: Optional[int] = None
    summary: Optional[str] = None
    """Human summary for printer columns, e.g. 40/120 (33%)."""


class RunStatus(ApiModel):
    """One run of a kind that runs again (a VectorIndex sync): its attempts carry its number."""

    number: int = Field(ge=1)
    reason: Optional[str] = None
    """Why it ran: Created, SpecChanged or Scheduled."""
    generation: Optional[int] = None
    """metadata.generation the run was started for."""
    start_time: Optional[str] = None
    end_time: Optional[str] = None
    outcome: Optional[str] = None
    """Succeeded or Failed, once ended."""


class StatusBase(ApiModel):
    """Status fields every kind has: kstatus conditions, phase, results."""

    model_config = {"extra": "allow"}

    phase: Optional[Phase] = None
    observed_generation: Optional[int] = None
    conditions: list[Condition] = Field(default_factory=list)
    message: Optional[str] = None
    output: Optional[dict[str, Any]] = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Kind-specific results: model URI and version, index version, endpoint URL, scores."""
    inputs: Optional[dict[str, Any]] = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """What was taken from the resource's dependencies for its current run (a FineTune's model URI, a
    VectorIndex's version), as handed to the workload."""
    storage_prefix: Optional[str] = None
    """s3:// URI of this resource's prefix."""


class CommonStatus(StatusBase):
    """Status of the kinds that run as RayJob attempts (TrainingJob, FineTune, VectorIndex, EvalRun)."""

    attempts: list[Attempt] = Field(default_factory=list)
    restarts: Optional[int] = None
    """Attempts after the first (of the current run) that count against maxRestarts."""
    progress: Optional[ProgressStatus] = None
    next_attempt_at: Optional[str] = None
    """When the next attempt is launched (while backing off)."""
    run: Optional[RunStatus] = None
    """The current or last run, for kinds that run again."""
    mlflow_run_id: Optional[str] = None


class TrainingJobStatus(CommonStatus):
    """A TrainingJob's attempts, and how much of its wall time trained the final model."""

    goodput: Optional[Goodput] = None
    """productive / wall seconds since the first attempt, and what each resume cost (from the workload)."""


class VectorIndexStatus(CommonStatus):
    """A VectorIndex's runs, and the version it serves (kept while the next sync works)."""

    current_version: Optional[int] = None
    """The committed version retrieval reads."""
    documents: Optional[int] = None
    """Documents in the current version."""
    chunks: Optional[int] = None
    """Chunks (vectors) in the current version."""
    last_sync_time: Optional[str] = None
    """When the current version was committed."""
    quality: Optional[dict[str, Optional[float]]] = None
    """The build's self-check: recallAt10 of the approximate index against exact search."""
    skipped: Optional[dict[str, Any]] = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    """Documents left out of the current version, by cause (count and examples)."""


class EvalRows(ApiModel):
    total: Optional[int] = None
    """Questions in the dataset."""
    scored: Optional[int] = None
    """Rows answered and judged (or answered, without a judge)."""
    failed: Optional[int] = None
    """Rows kept as error rows: the endpoint did not answer, or the judge's reply stayed invalid."""


class GateResult(ApiModel):
    metric: str
    op: str
    value: float
    """The threshold."""
    actual: Optional[float] = None
    """The run's value; absent when the run did not produce the metric."""
    passed: bool


class EvalRunStatus(CommonStatus):
    """An EvalRun's headline numbers and its gate."""

    summary: Optional[dict[str, Any]] = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    """judgeScore (0-3), judge per criterion, retrieval per index and metric@k, latency, the row counts."""
    rows: Optional[EvalRows] = None
    gate: list[GateResult] = Field(default_factory=list)
    """Each gate condition with the run's value; condition Passed says whether all held."""


class ReplicaStatus(ApiModel):
    ready: Optional[int] = None
    """Serving replicas passing their health check."""
    desired: Optional[int] = None
    """Replicas the autoscaler currently wants."""


class ServedModelStatus(ApiModel):
    name: str
    """What clients pass as the OpenAI `model`."""
    type: str
    """base, adapter, template or embedding."""
    source: Optional[str] = None
    """Where its weights came from (models:/<name>/<version>, s3://…), or the model a template runs on."""


class SecretKeyStatus(ApiModel):
    name: str
    key: str


class ServingStatus(StatusBase):
    """Status of a ServingEndpoint: a long-running RayService, not attempts."""

    url: Optional[str] = None
    """Base URL of the OpenAI-compatible API (…/v1)."""
    models: list[ServedModelStatus] = Field(default_factory=list)
    """Model names clients can pass: the base model, each adapter, each prompt template."""
    replicas: Optional[ReplicaStatus] = None
    ray_service: Optional[str] = None
    """Name of the RayService child."""
    api_key_secret: Optional[SecretKeyStatus] = None
    """The Secret (and key) holding the keys the endpoint accepts, for clients in the namespace (an EvalRun mounts
    it); absent: the endpoint accepts every request."""
