"""Build the KubeRay RayJob for one attempt of a batch resource. Pure: same inputs, same object."""

from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

import yaml

from kubeforge.api.shared import CommonSpec
from kubeforge.api.workload import CONTEXT_ENV, WorkloadContext
from kubeforge.launch.merge import POD_TEMPLATE_SPEC, RAY_CLUSTER_SPEC, strategic_merge
from kubeforge.launch.names import attempt_name, child_annotations, child_labels, owner_reference
from kubeforge.settings import Settings

RAY_API_VERSION = "ray.io/v1"
GPU_RESOURCE = "nvidia.com/gpu"


def deep_merge(base: dict, override: dict) -> dict:
    """Recursive dict merge; lists and scalars in `override` replace those in `base` (Ray's runtime_env)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _cpu_quantity(cpus: float) -> str:
    """2.0 -> "2", 0.5 -> "0.5": the same quantity whether the number came from YAML, JSON or env."""
    return str(int(cpus)) if float(cpus).is_integer() else str(cpus)


def _container(name: str, image: str, settings: Settings, cpus: float, memory: str, gpus: int) -> dict:
    limits: dict[str, Any] = {"cpu": _cpu_quantity(cpus), "memory": memory}
    if gpus:
        limits[GPU_RESOURCE] = gpus
    return {
        "name": name,
        "image": image,
        "envFrom": [{"secretRef": {"name": settings.workload_env_secret,
                                   "optional": not settings.workload_env_secret_required}}],
        "resources": {"requests": dict(limits), "limits": limits},
        "securityContext": copy.deepcopy(settings.ray_container_security_context),
    }


def platform_pod_template(settings: Settings) -> dict:
    """What the platform team set once for every Ray pod (Helm values `rayPods`), as a pod template patch."""
    metadata = {key: dict(value) for key, value in (("labels", settings.ray_pod_labels),
                                                    ("annotations", settings.ray_pod_annotations)) if value}
    pod: dict[str, Any] = {}
    for key, value in (("serviceAccountName", settings.ray_service_account_name),
                       ("priorityClassName", settings.ray_priority_class_name),
                       ("imagePullSecrets", settings.ray_image_pull_secrets),
                       ("nodeSelector", settings.ray_node_selector),
                       ("tolerations", settings.ray_tolerations),
                       ("affinity", settings.ray_affinity),
                       ("securityContext", settings.ray_pod_security_context)):
        if value:
            pod[key] = copy.deepcopy(value)
    return {"metadata": metadata, "spec": pod} if metadata else {"spec": pod}


def build_ray_cluster_spec(spec: CommonSpec, settings: Settings) -> dict:
    """The RayCluster spec of one resource (RayJob spec.rayClusterSpec, RayService spec.rayClusterConfig):
    Kubeforge's defaults, then the platform's (`platform_pod_template`) in every pod, then the resource's
    spec.ray.rayClusterSpec, merged as a strategic merge patch (kubeforge.launch.merge)."""
    image = spec.ray.image or settings.workload_image
    res = spec.resources
    head_container = _container("ray-head", image, settings, settings.ray_head_cpus, settings.ray_head_memory, 0)
    head_container["ports"] = [
        {"containerPort": 6379, "name": "gcs"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
    ]
    platform = platform_pod_template(settings)
    head_template = strategic_merge({"spec": {"containers": [head_container]}}, platform, POD_TEMPLATE_SPEC)
    worker_template = strategic_merge({"spec": {"containers": [
        _container("ray-worker", image, settings, res.cpus_per_worker, res.memory, res.gpus_per_worker)]}},
        platform, POD_TEMPLATE_SPEC)
    if res.gpu_type and settings.gpu_node_label:
        worker_template = strategic_merge(worker_template, {"spec": {"nodeSelector": {
            settings.gpu_node_label: res.gpu_type}}}, POD_TEMPLATE_SPEC)
    cluster = {
        "rayVersion": spec.ray.ray_version or settings.ray_version,
        "headGroupSpec": {
            # The head only hosts the driver; training runs on workers.
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": head_template,
        },
        "workerGroupSpecs": [{
            "groupName": "workers",
            "replicas": res.workers,
            "minReplicas": res.workers,
            "maxReplicas": res.workers,
            "rayStartParams": {},
            "template": worker_template,
        }],
    }
    return strategic_merge(cluster, spec.ray.ray_cluster_spec or {}, RAY_CLUSTER_SPEC, "spec.ray.rayClusterSpec")


def with_secret_env(cluster: dict, env: list[dict]) -> dict:
    """`env` (items with valueFrom.secretKeyRef) in the main container of every Ray pod, replacing same-named
    items: the kubelet resolves them, so a key never enters the Ray object, the context or status."""
    if not env:
        return cluster
    cluster = copy.deepcopy(cluster)
    names = {item["name"] for item in env}
    for group in [cluster["headGroupSpec"], *(cluster.get("workerGroupSpecs") or [])]:
        for container in group["template"]["spec"]["containers"][:1]:
            kept = [item for item in container.get("env") or [] if item.get("name") not in names]
            container["env"] = kept + copy.deepcopy(env)
    return cluster


def build_runtime_env(spec: CommonSpec, context: WorkloadContext, settings: Settings) -> dict:
    env_vars = {CONTEXT_ENV: context.model_dump_json(), "HF_HUB_OFFLINE": "1"}
    if settings.mlflow_tracking_uri:
        env_vars.setdefault("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)
    runtime_env = deep_merge({"env_vars": env_vars}, spec.ray.runtime_env or {})
    runtime_env["env_vars"][CONTEXT_ENV] = env_vars[CONTEXT_ENV]  # users cannot override the contract
    return runtime_env


def cluster_placement(spec: CommonSpec, settings: Settings) -> dict:
    """Where a RayJob runs: an existing RayCluster picked by spec.ray.clusterSelector, or its own ephemeral one,
    shut down when the job ends and deleted after the TTL."""
    if spec.ray.cluster_selector:
        return {"clusterSelector": dict(spec.ray.cluster_selector)}
    return {"rayClusterSpec": build_ray_cluster_spec(spec, settings), "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": settings.rayjob_ttl_seconds}


def build_rayjob(owner: dict, spec: CommonSpec, context: WorkloadContext, workload_module: str,
                 settings: Settings, active_deadline_seconds: Optional[int] = None,
                 secret_env: Sequence[dict] = ()) -> dict:
    """The RayJob for attempt `context.attempt` of `owner` (the Kubeforge resource as stored); `secret_env` goes
    into the pods of its own cluster (one picked by clusterSelector must already have it)."""
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
    rayjob_spec.update(cluster_placement(spec, settings))
    if "rayClusterSpec" in rayjob_spec:
        rayjob_spec["rayClusterSpec"] = with_secret_env(rayjob_spec["rayClusterSpec"], list(secret_env))
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
