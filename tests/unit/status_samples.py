"""Sample objects of every Kubeforge kind in every phase, their status written by the real reconcile functions
(`controllers.batch.reconcile`, `controllers.serving.reconcile_endpoint`), for the GitOps health readers
(Argo CD's Lua health checks, kstatus as Flux reads it).

Each sample is named `<phase>/<reason>` (or a plain description) and has the health both readers must give.
Kinds without dependencies of their own get the dependency cases from the same kind declaring one (as
test_status_contract does): the status is still written by the real reconcile.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from kubeforge.controllers.batch import Observed, reconcile
from kubeforge.controllers.registry import BATCH_KINDS
from kubeforge.controllers.serving import ServingObserved, reconcile_endpoint
from kubeforge.prerequisites import Unmet
from kubeforge.settings import Settings

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
SETTINGS = Settings(bucket="kubeforge", reconcile_period_seconds=2)
INDEX_DEP = ("VectorIndex", "docs")
READY_INDEX = {"metadata": {"name": "docs", "generation": 1}, "status": {
    "phase": "Ready", "currentVersion": 4, "observedGeneration": 1,
    "storagePrefix": "s3://kubeforge/team/VectorIndex/docs",
    "output": {"version": 4, "indexUri": "s3://kubeforge/team/VectorIndex/docs/versions/4"},
    "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded"}]}}
RUNNING_INDEX = {"metadata": {"name": "docs"}, "status": {
    "phase": "Running", "conditions": [{"type": "Ready", "status": "False", "reason": "Running"}]}}
FAILED_INDEX = {"metadata": {"name": "docs"}, "status": {
    "phase": "Failed", "conditions": [{"type": "Ready", "status": "False", "reason": "RetriesExhausted"},
                                      {"type": "Stalled", "status": "True", "reason": "RetriesExhausted"}]}}
GATE_MESSAGE = "gate failed: retrieval/docs/ndcg@5 0.2 (needs >= 0.5)"

SPECS: dict[str, dict] = {
    "TrainingJob": {"model": {"config": {"model_type": "llama"}}, "tokenizer": {"uri": "s3://b/tok"},
                    "dataset": {"uri": "s3://b/text.jsonl"}, "training": {"maxSteps": 10}},
    "FineTune": {"baseModel": {"uri": "s3://b/m"}, "dataset": {"trainUri": "s3://b/t.jsonl"},
                 "output": {"registeredModelName": "m"}},
    "VectorIndex": {"source": {"uri": "s3://b/docs/"}},
    "EvalRun": {"dataset": {"uri": "s3://b/questions.jsonl"}, "target": {"vectorIndexRefs": ["docs"]},
                "gate": [{"metric": "retrieval/docs/ndcg@5", "op": ">=", "value": 0.5}]},
}
INVALID_SPECS: dict[str, dict] = {kind: {**spec, "notAField": True} for kind, spec in SPECS.items()}
RESULTS: dict[str, dict] = {
    "TrainingJob": {"modelUri": "s3://b/m", "steps": 10, "resourceUid": "u-1"},
    "FineTune": {"modelUri": "models:/m/1", "adapterUri": "s3://b/a", "resourceUid": "u-1"},
    "VectorIndex": {"version": 3, "documents": 12, "chunks": 80, "metric": "cosine", "dims": 384, "recall": 1.0,
                    "indexUri": "s3://kubeforge/team/VectorIndex/r/versions/3"},
    "EvalRun": {"metrics": {"retrieval/docs/ndcg@5": 0.8, "retrieval/ndcg@5": 0.8}},
}
DONE = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}


@dataclass(frozen=True)
class Sample:
    kind: str
    case: str
    obj: dict
    argo: str
    """Argo CD health: Healthy, Progressing, Degraded or Suspended."""
    kstatus: str
    """kstatus: Current, InProgress or Failed."""
    message: str = ""
    """Text the Argo CD health message must contain."""


def with_a_dependency(kind):
    """The same kind declaring a dependency on VectorIndex docs (for kinds that have none of their own)."""
    if kind.dependencies(kind.info.spec_model.model_validate(SPECS[kind.info.kind])):
        return kind
    cls = type(f"{type(kind).__name__}WithDependency", (type(kind),), {"dependencies": lambda self, spec: [INDEX_DEP]})
    return cls()


def resource(kind: str, spec: dict, generation: int = 1) -> dict:
    return {"apiVersion": "kubeforge.dev/v1alpha1", "kind": kind,
            "metadata": {"name": "r", "namespace": "team", "uid": "u-1", "generation": generation},
            "spec": copy.deepcopy(spec)}


def _step(kind, obj: dict, observed: Observed, now: datetime = NOW) -> dict:
    """One pass of the real reconcile; the kind's own dependencies are Ready unless `observed` says otherwise."""
    if not observed.dependencies and "notAField" not in obj["spec"]:
        spec = kind.info.spec_model.model_validate(obj["spec"])
        observed.dependencies = {key: READY_INDEX for key in kind.dependencies(spec)}
    plan = reconcile(kind, obj, observed, now, SETTINGS)
    updated = copy.deepcopy(obj)
    updated["status"] = plan.status
    return updated


def _job(obj: dict, **status) -> Observed:
    return Observed(rayjobs={obj["status"]["attempts"][-1]["rayJob"]: {"metadata": {}, "status": status}})


def batch_samples(name: str) -> list[Sample]:
    kind = BATCH_KINDS[name]
    one_shot = kind.info.one_shot
    fresh = resource(name, SPECS[name])
    no_retries = resource(name, {**SPECS[name], "failurePolicy": {"maxRestarts": 0}})
    recorded = _step(kind, fresh, Observed())  # attempt 1 recorded
    launched = _step(kind, recorded, Observed())  # its RayJob created
    starting = _step(kind, launched, _job(launched, jobDeploymentStatus="Initializing", message="0/1 nodes"))
    running = _step(kind, launched, _job(launched, jobDeploymentStatus="Running", jobStatus="RUNNING"))
    suspended = _step(kind, launched, _job(launched, jobDeploymentStatus="Suspended"))
    failed_job = dict(jobDeploymentStatus="Failed", jobStatus="FAILED", message="ray head pod lost: NodeLost")
    backing_off = _step(kind, launched, _job(launched, **failed_job))
    no_retries_launched = _step(kind, _step(kind, no_retries, Observed()), Observed())
    exhausted = _step(kind, no_retries_launched, _job(no_retries_launched, **failed_job))
    done = _job(launched, **DONE)
    done.result = RESULTS[name]
    succeeded = _step(kind, launched, done)
    invalid = _step(kind, resource(name, INVALID_SPECS[name]), Observed())
    unmet = _step(kind, fresh, Observed(unmet=[Unmet("KubeRayMissing", "the RayJob CRD is not installed")]))
    dependent = with_a_dependency(kind)
    waiting = _step(dependent, fresh, Observed(dependencies={INDEX_DEP: RUNNING_INDEX}))
    dependency_failed = _step(dependent, fresh, Observed(dependencies={INDEX_DEP: FAILED_INDEX}))
    stale = copy.deepcopy(succeeded)
    stale["metadata"]["generation"] = 2

    samples = [
        # kstatus cannot tell a custom resource its controller has not seen yet from one without conditions
        # (status.go Compute: "Resource is current"); Argo CD is told to wait.
        Sample(name, "no status", fresh, "Progressing", "Current"),
        Sample(name, "Waiting/WaitingForDependency", waiting, "Progressing", "InProgress", "waiting for"),
        Sample(name, "Waiting/DependencyFailed", dependency_failed, "Degraded", "Failed"),
        Sample(name, "Pending/KubeRayMissing", unmet, "Degraded", "Failed", "RayJob CRD"),
        Sample(name, "Running/Launching", recorded, "Progressing", "InProgress"),
        Sample(name, "Running/Starting", starting, "Progressing", "InProgress", "Initializing"),
        Sample(name, "Running/Running", running, "Progressing", "InProgress"),
        Sample(name, "Pending/Suspended", suspended, "Suspended", "InProgress"),
        Sample(name, "Retrying/BackingOff", backing_off, "Progressing", "InProgress", "retrying in"),
        Sample(name, "Failed/" + _reason(exhausted), exhausted, "Degraded", "Failed", "NodeLost"),
        Sample(name, "Failed/InvalidSpec", invalid, "Degraded", "Failed", "invalid spec"),
        Sample(name, ("Succeeded" if one_shot else "Ready") + "/Succeeded", succeeded, "Healthy", "Current"),
        Sample(name, "stale observedGeneration", stale, "Progressing", "InProgress", "generation 2"),
    ]
    if name == "VectorIndex":
        resyncing = _step(kind, succeeded, Observed(), now=NOW + timedelta(hours=2))
        resyncing["metadata"]["generation"] = 2
        resyncing = _step(kind, resyncing, Observed(), now=NOW + timedelta(hours=2))
        low_recall = _step(kind, launched, Observed(rayjobs=done.rayjobs, result={
            **RESULTS[name], "recall": 0.81, "recallK": 10, "minRecall": 0.95}))
        samples += [
            Sample(name, "Ready/re-syncing a new spec", resyncing, "Progressing", "InProgress"),
            Sample(name, "Ready/Degraded recall", low_recall, "Healthy", "Current", "recall@10"),
        ]
    if name == "EvalRun":
        gate_failed = Observed(rayjobs=done.rayjobs, result={"metrics": {"retrieval/docs/ndcg@5": 0.2}})
        samples.append(Sample(name, "Failed/GateFailed", _step(kind, launched, gate_failed), "Degraded", "Failed",
                              GATE_MESSAGE))
    return samples


def _reason(obj: dict) -> str:
    return next(c["reason"] for c in obj["status"]["conditions"] if c["type"] == "Ready")


SERVING_SPEC = {"model": {"fineTuneRef": "base-ft"}, "rag": {"vectorIndexRef": "docs", "topK": 3},
                "autoscaling": {"minReplicas": 1, "maxReplicas": 2}}
BASE_FT = {"metadata": {"name": "base-ft"}, "status": {
    "phase": "Succeeded", "conditions": [{"type": "Ready", "status": "True"}],
    "output": {"mergedModelName": "team-base-ft-merged", "mergedModelVersion": "2", "modelUri": "models:/x/1"}}}
SERVING_DEPS = {("FineTune", "base-ft"): BASE_FT, INDEX_DEP: READY_INDEX}


def _serve(obj: dict, rayservice: dict | None = None, deps: dict = SERVING_DEPS) -> tuple[dict, list[dict]]:
    children = {rayservice["metadata"]["name"]: rayservice} if rayservice else {}
    plan = reconcile_endpoint(copy.deepcopy(obj), ServingObserved(rayservices=children, dependencies=dict(deps)),
                              NOW, SETTINGS)
    updated = copy.deepcopy(obj)
    updated["status"] = plan.status
    return updated, plan.apply


def _rayservice(desired: dict, ready: bool, app_status: str = "RUNNING", upgrading: bool = False) -> dict:
    child = copy.deepcopy(desired)
    child["metadata"]["generation"] = 1
    name = f"{child['metadata']['namespace']}.{child['metadata']['name']}"
    child["status"] = {
        "observedGeneration": 1, "serviceStatus": "Running" if ready else "", "numServeEndpoints": int(ready),
        "activeServiceStatus": {"applicationStatuses": {name: {"status": app_status, "message": "boom"}}},
        "conditions": [{"type": "Ready", "status": str(ready), "reason": "x", "message": "m"},
                       {"type": "UpgradeInProgress", "status": str(upgrading), "reason": "x", "message": ""}]}
    return child


def serving_samples() -> list[Sample]:
    name = "ServingEndpoint"
    fresh = resource(name, SERVING_SPEC)
    fresh["metadata"]["name"] = "chat"
    deploying, (desired,) = _serve(fresh)
    serving, _ = _serve(deploying, _rayservice(desired, ready=True))
    still_deploying, _ = _serve(deploying, _rayservice(desired, ready=False))
    upgrading, _ = _serve(serving, _rayservice(desired, ready=True, upgrading=True))
    unhealthy, _ = _serve(serving, _rayservice(desired, ready=False, app_status="UNHEALTHY"))
    deploy_failed, _ = _serve(deploying, _rayservice(desired, ready=False, app_status="DEPLOY_FAILED"))
    waiting, _ = _serve(fresh, deps={**SERVING_DEPS, INDEX_DEP: RUNNING_INDEX})
    dependency_failed, _ = _serve(fresh, deps={**SERVING_DEPS, INDEX_DEP: FAILED_INDEX})
    invalid_obj = copy.deepcopy(fresh)
    invalid_obj["spec"]["notAField"] = True
    invalid, _ = _serve(invalid_obj)
    stale = copy.deepcopy(serving)
    stale["metadata"]["generation"] = 2
    return [
        Sample(name, "no status", fresh, "Progressing", "Current"),
        Sample(name, "Waiting/WaitingForDependency", waiting, "Progressing", "InProgress", "waiting for"),
        Sample(name, "Waiting/DependencyFailed", dependency_failed, "Degraded", "Failed", "failed"),
        Sample(name, "Deploying/Deploying", still_deploying, "Progressing", "InProgress"),
        Sample(name, "Ready/Serving", serving, "Healthy", "Current", "serving"),
        Sample(name, "Ready/Upgrading", upgrading, "Progressing", "InProgress", "rolling out"),
        Sample(name, "Waiting/Unhealthy", unhealthy, "Progressing", "InProgress", "not serving"),
        Sample(name, "Failed/DeployFailed", deploy_failed, "Degraded", "Failed", "could not deploy"),
        Sample(name, "Failed/InvalidSpec", invalid, "Degraded", "Failed", "invalid spec"),
        Sample(name, "stale observedGeneration", stale, "Progressing", "InProgress", "generation 2"),
    ]


def all_samples() -> list[Sample]:
    return [*(s for name in ("TrainingJob", "FineTune", "VectorIndex", "EvalRun") for s in batch_samples(name)),
            *serving_samples()]
