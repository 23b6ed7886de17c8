"""Types shared by every Kubeforge kind: resources, Ray placement, failure policy, storage, MLflow."""

from __future__ import annotations

from enum import Enum
from typing import Any, Optional

from pydantic import ConfigDict, Field

from kubeforge.api.meta import DEFAULT_EMPTY_OBJECT, ApiModel

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[mkMGTPE])?$"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def cel(*rules: tuple[str, str]) -> ConfigDict:
    """Model config carrying CEL `x-kubernetes-validations` (rule, message) for the CRD schema."""
    return ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}
    )


class FailureReason(str, Enum):
    """Why an attempt ended; drives the retry decision."""

    INFRASTRUCTURE = "Infrastructure"
    OUT_OF_MEMORY = "OutOfMemory"
    HANG = "Hang"
    NODE_CHECK_FAILED = "NodeCheckFailed"
    START_TIMEOUT = "StartTimeout"
    """The Ray job did not start running within failurePolicy.startTimeout; retried like Infrastructure."""
    USER_ERROR = "UserError"
    UNKNOWN = "Unknown"


class RuleAction(str, Enum):
    RETRY = "Retry"
    FAIL = "Fail"
    IGNORE = "Ignore"


class DeletionPolicy(str, Enum):
    RETAIN = "Retain"
    DELETE = "Delete"


class Resources(ApiModel):
    """Compute for the Ray cluster that runs the workload."""

    workers: int = Field(default=1, ge=1, le=1024)
    """Number of Ray worker replicas (training workers for Ray Train kinds)."""
    cpus_per_worker: float = Field(default=1, gt=0, le=256)
    """CPU cores requested by each worker."""
    gpus_per_worker: int = Field(default=0, ge=0, le=16)
    """GPUs requested by each worker; 0 runs on CPU."""
    memory: str = Field(default="4Gi", pattern=QUANTITY_PATTERN)
    """Memory per worker as a Kubernetes quantity, e.g. 16Gi."""
    gpu_type: Optional[str] = Field(default=None, max_length=63)
    """Accelerator type to schedule on (e.g. A100, H100); becomes a node selector and Ray resource."""


class RaySpec(ApiModel):
    """Where and how the Ray workload runs.

    Either let Kubeforge create an ephemeral RayCluster (optionally overriding parts of it
    with rayClusterSpec) or run on an existing RayCluster chosen with clusterSelector.
    """

    model_config = cel(
        ("!(has(self.rayClusterSpec) && has(self.clusterSelector))",
         "set either rayClusterSpec or clusterSelector, not both"),
    )

    image: Optional[str] = None
    """Container image for Ray head and workers; defaults to the operator's workload image."""
    ray_version: Optional[str] = None
    """Ray version of the image, passed to KubeRay."""
    ray_cluster_spec: Optional[dict[str, Any]] = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """KubeRay RayClusterSpec fields merged over the generated ephemeral cluster."""
    cluster_selector: Optional[dict[str, str]] = None
    """Labels of an existing RayCluster to submit to instead of creating one."""
    runtime_env: Optional[dict[str, Any]] = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Extra Ray runtime environment (pip, env_vars, ...) merged over Kubeforge's."""


class Backoff(ApiModel):
    """Exponential backoff between attempts."""

    model_config = cel(("self.maxSeconds >= self.initialSeconds", "maxSeconds must be >= initialSeconds"))

    initial_seconds: int = Field(default=10, ge=0, le=86400)
    """Delay before the first retry; doubles each retry."""
    max_seconds: int = Field(default=300, ge=0, le=86400)
    """Upper bound of the delay between retries."""


class FailureRule(ApiModel):
    """A user rule matched against a failed attempt before the built-in classification."""

    model_config = cel(
        ("(has(self.onExitCodes) ? 1 : 0) + (has(self.onLogPattern) ? 1 : 0) + (has(self.onReason) ? 1 : 0) == 1",
         "set exactly one of onExitCodes, onLogPattern, onReason"),
    )

    on_exit_codes: Optional[list[int]] = Field(default=None, min_length=1, max_length=32)
    """Match when the workload exited with one of these codes."""
    on_log_pattern: Optional[str] = Field(default=None, min_length=1, max_length=1024)
    """Match when this regular expression occurs in the failure message or log tail."""
    on_reason: Optional[FailureReason] = None
    """Match when the built-in classification gives this reason."""
    action: RuleAction
    """Retry (counts against maxRestarts), Fail (no retry) or Ignore (retry without counting)."""


class FailurePolicy(ApiModel):
    """How failed attempts are detected and retried."""

    max_restarts: int = Field(default=3, ge=0, le=100)
    """Retries after the first attempt before the resource fails."""
    backoff: Backoff = Field(default_factory=Backoff, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """Delay between attempts."""
    hang_timeout: str = Field(default="10m", pattern=DURATION_PATTERN)
    """Go duration (e.g. 10m). Once the Ray job is RUNNING and the workload has sent its first heartbeat, an attempt
    whose progress (step or phase) has not advanced for this long is stopped and retried as Hang. Time spent
    starting (until that first heartbeat) or suspended does not count."""
    start_timeout: str = Field(default="30m", pattern=DURATION_PATTERN)
    """Go duration (e.g. 30m). An attempt whose Ray job has not started running, or whose workload has not sent its
    first heartbeat, within this long (cluster still initializing, pods queued for GPUs, a stuck start-up) is
    stopped and retried with reason StartTimeout (Infrastructure). A suspended RayJob waits without limit."""
    rules: list[FailureRule] = Field(default_factory=list, max_length=32)
    """User rules, evaluated in order; the first match decides."""


class StorageSpec(ApiModel):
    """Object-store location override; defaults come from the operator settings."""

    bucket: Optional[str] = Field(default=None, min_length=3, max_length=63)
    """Bucket holding this resource's prefix."""
    prefix: Optional[str] = Field(default=None, max_length=512)
    """Prefix under the bucket; defaults to <namespace>/<Kind>/<name>."""


class MlflowSpec(ApiModel):
    """MLflow tracking override."""

    experiment: Optional[str] = Field(default=None, max_length=256)
    """Experiment name; defaults to <namespace>/<Kind>."""

    def experiment_for(self, obj: dict) -> str:
        """The experiment of `obj` (the resource as stored): this one's, or <namespace>/<Kind>."""
        return self.experiment or f"{obj['metadata']['namespace']}/{obj['kind']}"


class CommonSpec(ApiModel):
    """Fields every Kubeforge kind has."""

    resources: Resources = Field(default_factory=Resources, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """Compute for the workload."""
    ray: RaySpec = Field(default_factory=RaySpec, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """Ray cluster placement and runtime environment."""
    storage: StorageSpec = Field(default_factory=StorageSpec, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """Object-store location of checkpoints, progress and outputs."""
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """MLflow tracking settings."""
    deletion_policy: DeletionPolicy = DeletionPolicy.RETAIN
    """Retain (default) keeps checkpoints and outputs in the object store when the resource is deleted; Delete removes them."""


class BatchSpec(CommonSpec):
    """Fields of the kinds that run to completion as RayJob attempts (TrainingJob, FineTune, VectorIndex runs,
    EvalRun): how a failed attempt is detected and retried."""

    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """Failure detection and retry."""
