"""Build the KubeRay RayJob of one attempt of a batch inference run over a ServingEndpoint (`kubeforge batch`).
Pure: same inputs, same object.

The RayJob is owned by the ServingEndpoint (garbage-collected with it) but carries no `kubeforge.dev/owner-uid`
label: the operator indexes children by that label, and a batch run is not one of the endpoint's children to
reconcile (its loop reads RayServices only; without the label the batch RayJob does not even wake it).
"""

from __future__ import annotations

import hashlib
import json

import yaml

from kubeforge.api.batchinference import BatchInference
from kubeforge.api.serveapp import ServeAppConfig
from kubeforge.api.servingendpoint import ServingEndpointSpec
from kubeforge.api.workload import MlflowContext, StorageContext, WorkloadContext
from kubeforge.launch.names import LABEL_ATTEMPT, LABEL_KIND, LABEL_MANAGED_BY, LABEL_NAME, MANAGER, \
    child_annotations, child_name, label_value, owner_reference
from kubeforge.launch.rayjob import RAY_API_VERSION, build_runtime_env, cluster_placement
from kubeforge.settings import Settings
from kubeforge.storage.layout import ResourcePrefix

LABEL_BATCH = "kubeforge.dev/batch"
WORKLOAD_MODULE = "kubeforge_workloads.batch"


def batch_id(endpoint: dict, template: str, model: str, input_uri: str, output_uri: str) -> str:
    """The same run (endpoint incarnation, template, model, input, output) always gets the same id."""
    key = json.dumps([endpoint["metadata"]["uid"], template, model, input_uri, output_uri.rstrip("/")])
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def batch_rayjob_name(endpoint_name: str, run_id: str, attempt: int) -> str:
    return child_name(endpoint_name, f"b{run_id}-{attempt}")


def endpoint_prefix(endpoint: dict, spec: ServingEndpointSpec, settings: Settings) -> ResourcePrefix:
    meta = endpoint["metadata"]
    return ResourcePrefix.for_resource(spec.storage.bucket or settings.bucket, meta["namespace"], endpoint["kind"],
                                       meta["name"], spec.storage.prefix)


def build_batch_rayjob(endpoint: dict, request: BatchInference, app: ServeAppConfig, attempt: int,
                       settings: Settings, retries: int = 0) -> dict:
    """The RayJob for attempt `attempt` of `request` over `endpoint` (the ServingEndpoint as stored); `app` is the
    endpoint's resolved Serve config (`kubeforge.controllers.serving.app_config`). On a cluster of its own KubeRay
    reruns it up to `retries` times after a failure (backoffLimit), each run skipping the shards already written;
    KubeRay refuses backoffLimit with a clusterSelector, so there it is 0 and `kubeforge batch` resubmits."""
    meta = endpoint["metadata"]
    spec = ServingEndpointSpec.model_validate(endpoint.get("spec") or {})
    prefix = endpoint_prefix(endpoint, spec, settings)
    context = WorkloadContext(
        kind=endpoint["kind"], namespace=meta["namespace"], name=meta["name"], uid=meta["uid"],
        generation=meta.get("generation", 1), attempt=attempt, spec=endpoint.get("spec") or {},
        storage=StorageContext(bucket=prefix.bucket, prefix=prefix.prefix),
        mlflow=MlflowContext(experiment=spec.mlflow.experiment_for(endpoint),
                             run_name=f"{meta['name']}-batch-{request.id}", tracking_uri=settings.mlflow_tracking_uri),
        inputs={"batch": request.model_dump(mode="json"), "app": app.model_dump(mode="json")},
    )
    name = batch_rayjob_name(meta["name"], request.id, attempt)
    rayjob_spec = {
        "entrypoint": f"python -m {WORKLOAD_MODULE}",
        "runtimeEnvYAML": yaml.safe_dump(build_runtime_env(spec, context, settings), sort_keys=True),
        "jobId": f"{meta['namespace']}-{name}-{meta['uid'][:8]}",
        "submissionMode": "K8sJobMode",
    }
    placement = cluster_placement(spec, settings)
    rayjob_spec["backoffLimit"] = 0 if "clusterSelector" in placement else retries
    rayjob_spec.update(placement)
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayJob",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {LABEL_MANAGED_BY: MANAGER, LABEL_KIND: endpoint["kind"], LABEL_NAME: label_value(meta["name"]),
                       LABEL_BATCH: request.id, LABEL_ATTEMPT: str(attempt)},
            "annotations": child_annotations(meta["name"]),
            "ownerReferences": [owner_reference(endpoint)],
        },
        "spec": rayjob_spec,
    }
