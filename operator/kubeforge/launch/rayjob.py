"""Build the KubeRay RayJob for one attempt of a batch resource. Pure: same inputs, same object."""

from __future__ import annotations

import copy
from typing import Any, Optional

import yaml

from kubeforge.api.shared import CommonSpec
from kubeforge.api.workload import CONTEXT_ENV, WorkloadContext
from kubeforge.launch.names import attempt_name, child_annotations, child_labels, owner_reference
from kubeforge.settings import Settings

RAY_API_VERSION = "ray.io/v1"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


def deep_merge(base: dict, override: dict) -> dict:
    """Recursive dict merge; lists and scalars in `override` replace those in `base`."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _container(name: str, image: str, settings: Settings, cpus: float, memory: str, gpus: int) -> dict:
    limits: dict[str, Any] = {"cpu": str(cpus), "memory": memory}
    if gpus:
        limits[GPU_RESOURCE] = gpus
    return {
        "name": name,
        "image": image,
        "envFrom": [{"secretRef": {"name": settings.workload_env_secret, "optional": True}}],
        "resources": {"requests": dict(limits), "limits": limits},
    }


def build_ray_cluster_spec(spec: CommonSpec, settings: Settings) -> dict:
    image = spec.ray.image or settings.workload_image
    res = spec.resources
    head_container = _container("ray-head", image, settings, 2, "8Gi", 0)
    head_container["ports"] = [
        {"containerPort": 6379, "name": "gcs"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
    ]
    worker_pod: dict[str, Any] = {
        "containers": [_container("ray-worker", image, settings, res.cpus_per_worker, res.memory, res.gpus_per_worker)]
    }
    if res.gpu_type:
        worker_pod["nodeSelector"] = {GPU_PRODUCT_LABEL: res.gpu_type}
    cluster = {
        "rayVersion": spec.ray.ray_version or settings.ray_version,
        "headGroupSpec": {
            # The head only hosts the driver; training runs on workers.
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": {"spec": {"containers": [head_container]}},
        },
        "workerGroupSpecs": [{
            "groupName": "workers",
            "replicas": res.workers,
            "minReplicas": res.workers,
            "maxReplicas": res.workers,
            "rayStartParams": {},
            "template": {"spec": worker_pod},
        }],
    }
    return deep_merge(cluster, spec.ray.ray_cluster_spec or {})


def build_runtime_env(spec: CommonSpec, context: WorkloadContext, settings: Settings) -> dict:
    env_vars = {CONTEXT_ENV: context.model_dump_json(), "HF_HUB_OFFLINE": "1"}
    if settings.mlflow_tracking_uri:
        env_vars.setdefault("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)
    runtime_env = deep_merge({"env_vars": env_vars}, spec.ray.runtime_env or {})
    runtime_env["env_vars"][CONTEXT_ENV] = env_vars[CONTEXT_ENV]  # users cannot override the contract
    return runtime_env


def build_rayjob(owner: dict, spec: CommonSpec, context: WorkloadContext, workload_module: str,
                 settings: Settings, active_deadline_seconds: Optional[int] = None) -> dict:
    """The RayJob for attempt `context.attempt` of `owner` (the Kubeforge resource as stored)."""
    meta = owner["metadata"]
    name = attempt_name(meta["name"], context.attempt)
    rayjob_spec: dict[str, Any] = {
        "entrypoint": f"python -m {workload_module}",
        "runtimeEnvYAML": yaml.safe_dump(build_runtime_env(spec, context, settings), sort_keys=True),
        "jobId": f"{meta['namespace']}-{name}-{meta['uid'][:8]}",
        # Kubeforge owns retries: a failed attempt becomes a new RayJob that resumes from a checkpoint.
        "backoffLimit": 0,
        "submissionMode": "K8sJobMode",
    }
    if active_deadline_seconds:
        rayjob_spec["activeDeadlineSeconds"] = active_deadline_seconds
    if spec.ray.cluster_selector:
        rayjob_spec["clusterSelector"] = dict(spec.ray.cluster_selector)
    else:
        rayjob_spec["rayClusterSpec"] = build_ray_cluster_spec(spec, settings)
        rayjob_spec["shutdownAfterJobFinishes"] = True
        rayjob_spec["ttlSecondsAfterFinished"] = settings.rayjob_ttl_seconds
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayJob",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": child_labels(owner["kind"], meta["name"], meta["uid"], context.attempt),
            "annotations": child_annotations(meta["name"]),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": rayjob_spec,
    }
