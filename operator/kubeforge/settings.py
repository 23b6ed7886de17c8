"""The one settings object for the operator: environment variables `KUBEFORGE_*` (Helm values set them)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBEFORGE_", extra="ignore")

    bucket: str = "kubeforge"
    """Default bucket for every resource's prefix (spec.storage.bucket overrides)."""
    s3_endpoint_url: Optional[str] = None
    """S3 endpoint the operator reads progress from; None means AWS (or AWS_ENDPOINT_URL)."""
    workload_image: str = "ghcr.io/kubeforge/kubeforge-workloads:0.1.0"
    ray_version: str = "2.60.0"
    workload_env_secret: str = "kubeforge-workload-env"
    """Secret (in the resource's namespace) whose keys become env vars of Ray head and workers:
    S3 endpoint and credentials, MLFLOW_TRACKING_URI."""
    mlflow_tracking_uri: Optional[str] = None
    """Passed to workloads when the workload Secret does not set MLFLOW_TRACKING_URI."""
    reconcile_period_seconds: float = Field(default=10.0, gt=0)
    """Longest a resource goes without a pass when nothing wakes it: a safety resync. Child and dependency
    changes wake their owner at once (watched, not polled); watchdog deadlines and backoffs schedule their own."""
    heartbeat_poll_seconds: float = Field(default=30.0, gt=0)
    """How often a running attempt's progress heartbeat is read from the object store (one GET)."""
    progress_write_seconds: float = Field(default=30.0, ge=0)
    """Least time between two status writes that carry only progress (step, loss, throughput); phase,
    condition and attempt changes are written at once."""
    event_coalesce_seconds: float = Field(default=0.2, ge=0, le=5)
    """After a watch event wakes a resource, wait this long for the rest of a burst before the pass."""
    deletion_quiet_seconds: float = Field(default=30.0, gt=0)
    """deletionPolicy Delete sweeps a deleted resource's prefix until a sweep this long after the last one finds
    it empty: a stopping workload may still write (a pod's default termination grace period is 30 s)."""
    startup_jitter_seconds: float = Field(default=5.0, ge=0)
    """A restarted operator spreads the first passes of the resources it finds over this many seconds."""
    rayjob_ttl_seconds: int = Field(default=3600, ge=0)
    """KubeRay ttlSecondsAfterFinished for finished attempts' clusters."""
    namespace: Optional[str] = None
    """Watch only this namespace; None watches all."""
    liveness_endpoint: Optional[str] = None
    """kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz (the chart's health.enabled sets it)."""
    workload_env_secret_required: bool = True
    """The workload Secret must exist in a resource's namespace: Ray pods mount it without `optional`, and the
    prerequisite check (kubeforge.prerequisites) holds the resource until it exists. False: mounted optional."""
    # Every Ray pod (head and workers of every RayJob and RayService): the platform's defaults, merged under
    # each resource's spec.ray.rayClusterSpec (kubeforge.launch.merge). JSON in the environment.
    ray_head_cpus: float = Field(default=2, gt=0)
    """CPU request and limit of the Ray head (it runs the driver and Ray's control plane, no training)."""
    ray_head_memory: str = Field(default="8Gi", pattern=r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[mkMGTPE])?$")
    """Memory request and limit of the Ray head, a Kubernetes quantity."""
    gpu_node_label: Optional[str] = None
    """Node label that spec.resources.gpuType selects on, e.g. nvidia.com/gpu.product (GPU Feature Discovery
    sets it); None: gpuType adds no node selector."""
    ray_pod_labels: dict[str, str] = {}
    ray_pod_annotations: dict[str, str] = {}
    ray_service_account_name: Optional[str] = None
    ray_priority_class_name: Optional[str] = None
    ray_image_pull_secrets: list[dict[str, str]] = []
    """LocalObjectReferences, e.g. [{"name": "regcred"}]."""
    ray_node_selector: dict[str, str] = {}
    ray_tolerations: list[dict[str, Any]] = []
    ray_affinity: dict[str, Any] = {}
    ray_pod_security_context: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    """Pod securityContext; the default and ray_container_security_context's pass the restricted Pod Security
    Standard."""
    ray_container_security_context: dict[str, Any] = {
        "runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}}
    """securityContext of every container Kubeforge puts in a Ray pod."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
