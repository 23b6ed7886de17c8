"""Build a ServingEndpoint's KubeRay RayService. Pure and deterministic: the same spec and inputs render a
byte-identical object, and nothing that changes from one reconcile to the next is put in rayClusterConfig
(KubeRay rolls a whole new Ray cluster when that changes; serveConfigV2 changes are rolled out by Serve in place).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import yaml

from kubeforge.api.serveapp import API_KEYS_ENV, IMPORT_PATH, ServeAppConfig
from kubeforge.api.servingendpoint import ServingEndpointSpec
from kubeforge.launch.names import MAX_CHILD_NAME, child_annotations, child_labels, is_dns1035_label, name_hash, \
    owner_reference
from kubeforge.launch.rayjob import RAY_API_VERSION, build_ray_cluster_spec, deep_merge, with_secret_env
from kubeforge.settings import Settings

DEPLOYMENT_NAME = "OpenAIServer"
"""The Serve deployment `kubeforge_workloads.serve.app:build` creates (autoscaling and resources are set on it)."""
SERVE_PORT = 8000
REPLICA_QUEUE_FACTOR = 4
"""kubeforge_workloads.serve.engine.QUEUE_FACTOR: requests a replica holds per batch slot before it answers 503."""
SPEC_HASH_ANNOTATION = "kubeforge.dev/spec-hash"
"""Digest of the rendered spec: the operator re-applies only when what it would send differs."""


def rayservice_name(owner_name: str) -> str:
    """The resource's own name when KubeRay accepts it for a RayService, else a valid name ending in a hash."""
    if is_dns1035_label(owner_name, MAX_CHILD_NAME):
        return owner_name
    readable = "".join(c if c.isalnum() or c == "-" else "-" for c in owner_name.lower())
    if not readable[:1].isalpha():
        readable = "s" + readable
    tail = f"-{name_hash(owner_name)}"
    return readable[: MAX_CHILD_NAME - len(tail)].rstrip("-") + tail


def route_prefix(namespace: str, name: str) -> str:
    """Unique per resource, so endpoints that share a Ray cluster (or the sandbox's one head) never clash."""
    return f"/{namespace}/{name}"


def application_name(namespace: str, name: str) -> str:
    return f"{namespace}.{name}"


def endpoint_url(namespace: str, name: str) -> str:
    """The OpenAI base URL inside the cluster: KubeRay's `<rayservice>-serve-svc`, which follows upgrades."""
    return f"http://{rayservice_name(name)}-serve-svc.{namespace}.svc:{SERVE_PORT}{route_prefix(namespace, name)}/v1"


def _with_api_key_env(cluster: dict, spec: ServingEndpointSpec) -> dict:
    """The replicas read the keys from the user's Secret through the kubelet: the key never enters this object."""
    if spec.auth is None:
        return cluster
    ref = spec.auth.api_key_secret_ref
    return with_secret_env(cluster, [{"name": API_KEYS_ENV,
                                      "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}])


def _serving_cluster(spec: ServingEndpointSpec, settings: Settings) -> dict:
    cluster = build_ray_cluster_spec(spec, settings)
    scaling = spec.autoscaling
    workers = spec.resources.workers
    low, high = max(workers, scaling.min_replicas), max(workers, scaling.max_replicas)
    if high > low:
        # Ray's autoscaler adds worker pods for the replicas Serve's autoscaler asks for; KubeRay owns
        # `replicas` then, so it is not rendered (an apply would fight the autoscaler).
        cluster["enableInTreeAutoscaling"] = True
        for group in cluster.get("workerGroupSpecs") or []:
            group.pop("replicas", None)
            group["minReplicas"], group["maxReplicas"] = low, high
    return _with_api_key_env(cluster, spec)


def serve_config(namespace: str, name: str, spec: ServingEndpointSpec, app: ServeAppConfig,
                 settings: Settings) -> dict:
    env_vars = {"HF_HUB_OFFLINE": "1"}
    if settings.mlflow_tracking_uri:
        env_vars["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    runtime_env = deep_merge({"env_vars": env_vars}, spec.ray.runtime_env or {})
    scaling = spec.autoscaling
    return {"applications": [{
        "name": application_name(namespace, name),
        "route_prefix": route_prefix(namespace, name),
        "import_path": IMPORT_PATH,
        "args": app.model_dump(mode="json"),
        "runtime_env": runtime_env,
        "deployments": [{
            "name": DEPLOYMENT_NAME,
            # Above the replica's own queue (maxNumSeqs × 4 waiting), so overload is answered by the replica
            # with 503 and Retry-After rather than queued silently in Ray's proxy.
            "max_ongoing_requests": max(app.engine.max_num_seqs * REPLICA_QUEUE_FACTOR + 8,
                                        scaling.target_ongoing_requests),
            "autoscaling_config": {"min_replicas": scaling.min_replicas,
                                   "initial_replicas": max(scaling.min_replicas, 1),
                                   "max_replicas": scaling.max_replicas,
                                   "target_ongoing_requests": scaling.target_ongoing_requests},
            "ray_actor_options": {"num_cpus": spec.resources.cpus_per_worker,
                                  "num_gpus": spec.resources.gpus_per_worker},
        }],
    }]}


def build_rayservice(owner: dict, spec: ServingEndpointSpec, app: ServeAppConfig, settings: Settings) -> dict:
    meta = owner["metadata"]
    body_spec: dict[str, Any] = {
        "serveConfigV2": yaml.safe_dump(serve_config(meta["namespace"], meta["name"], spec, app, settings),
                                        sort_keys=True),
        "rayClusterConfig": _serving_cluster(spec, settings),
        "upgradeStrategy": {"type": "NewCluster"},
    }
    digest = hashlib.sha256(json.dumps(body_spec, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayService",
        "metadata": {
            "name": rayservice_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": child_labels(owner["kind"], meta["name"], meta["uid"]),
            "annotations": {**child_annotations(meta["name"]), SPEC_HASH_ANNOTATION: digest},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": body_spec,
    }
