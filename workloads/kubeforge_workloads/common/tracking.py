"""MLflow: one run per resource, continued by every attempt; model registration, once per resource generation."""

from __future__ import annotations

import time
from typing import Callable, Optional

from kubeforge.api.workload import WorkloadContext


def tracked(what: str, log: Callable[[], str]) -> dict:
    """{"mlflowRunId": log()}, or {"trackingError": why} when MLflow failed: for results already committed to the
    object store, where an MLflow outage is reported rather than failing the run."""
    try:
        return {"mlflowRunId": log()}
    except Exception as error:
        message = f"could not log {what} to MLflow: {type(error).__name__}: {error}"[:300]
        print(f"kubeforge: {message}", flush=True)
        return {"trackingError": message}


def ensure_experiment(client, name: str) -> str:
    """The id of the experiment called `name`, created if missing; safe when several attempts race to create it.

    Not `mlflow.set_experiment`: when it loses that race (MLflow 3.x) it returns the experiment without making it
    active, so the next `start_run` silently lands in the Default experiment."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.get_experiment_by_name(name).experiment_id


def start_run(context: WorkloadContext, params: dict, remembered_run_id: Optional[str] = None) -> str:
    """Continue the resource's run (the id an earlier attempt remembered in the object store, else the run
    tagged with the resource uid) or create it; returns the run id."""
    import mlflow

    if context.mlflow.tracking_uri:
        mlflow.set_tracking_uri(context.mlflow.tracking_uri)
    client = mlflow.tracking.MlflowClient()
    experiment_id = ensure_experiment(client, context.mlflow.experiment)
    run_id = remembered_run_id
    if run_id is None:
        found = client.search_runs([experiment_id], filter_string=f"tags.`kubeforge.uid` = '{context.uid}'",
                                   max_results=1)
        run_id = found[0].info.run_id if found else None
    if run_id:
        run = mlflow.start_run(run_id=run_id)
    else:
        run = mlflow.start_run(experiment_id=experiment_id, run_name=context.mlflow.run_name, tags={
            "kubeforge.uid": context.uid, "kubeforge.kind": context.kind,
            "kubeforge.namespace": context.namespace, "kubeforge.name": context.name})
        mlflow.log_params(params)
    mlflow.set_tag("kubeforge.attempt", str(context.attempt))
    mlflow.log_param(f"attempt_{context.attempt}_generation", context.generation)
    return run.info.run_id


def publication_tags(context: WorkloadContext) -> dict[str, str]:
    """What identifies one publication: the resource (uid, not name: a re-created resource is a new one) and the
    spec generation it trained with. Every attempt of that pair publishes the same thing."""
    return {"kubeforge.uid": context.uid, "kubeforge.generation": str(context.generation)}


def register(name: str, run_id: str, artifact_path: str, identity: dict[str, str], description: Optional[str] = None,
             extra_tags: Optional[dict[str, str]] = None, await_seconds: float = 300) -> str:
    """The version of `name` registered for `identity` (publication_tags): the one an earlier attempt created, else
    a new one from the run's artifacts (a Hugging Face directory). Returns the version number.

    The identity tags are set in the same request that creates the version, so no version can exist without them
    (a kill between "created" and "tagged" would otherwise leave one that no retry finds)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        client.create_registered_model(name, description=description)
    except MlflowException as error:
        if "already exists" not in str(error).lower() and "RESOURCE_ALREADY_EXISTS" not in str(error):
            raise
    earlier = registered_version(client, name, identity, await_seconds)
    if earlier is not None:
        return earlier
    run = client.get_run(run_id)
    source = f"{run.info.artifact_uri}/{artifact_path}"
    version = client.create_model_version(name, source=source, run_id=run_id, description=description,
                                          tags={**(extra_tags or {}), **identity}, await_creation_for=await_seconds)
    return str(version.version)


def registered_version(client, name: str, identity: dict[str, str], await_seconds: float = 300,
                       poll_seconds: float = 1.0) -> Optional[str]:
    """The oldest usable version of `name` carrying every `identity` tag, waiting for one still
    PENDING_REGISTRATION (an earlier attempt died while the registry was copying it) to become READY; None when
    there is none. A version that FAILED_REGISTRATION never counts: the caller registers anew."""
    from mlflow.entities.model_registry.model_version_status import ModelVersionStatus

    from kubeforge_workloads.common.errors import WorkloadError

    failed = ModelVersionStatus.to_string(ModelVersionStatus.FAILED_REGISTRATION)
    pending = ModelVersionStatus.to_string(ModelVersionStatus.PENDING_REGISTRATION)
    conditions = [f"name = '{name}'", *(f"tags.`{key}` = '{value}'" for key, value in sorted(identity.items()))]
    found = client.search_model_versions(" AND ".join(conditions))
    deadline = time.monotonic() + await_seconds
    for version in sorted(found, key=lambda v: int(v.version)):
        while version.status == pending and time.monotonic() < deadline:
            time.sleep(poll_seconds)
            version = client.get_model_version(name, version.version)
        if version.status == pending:
            raise WorkloadError(f"model version {name}/{version.version} registered by an earlier attempt is "
                                f"still PENDING_REGISTRATION after {await_seconds:.0f}s; the next attempt waits again")
        if version.status != failed:
            return str(version.version)
    return None


def log_metric_once(run_id: str, key: str, value: float, step: int) -> None:
    """Log a metric unless the run already has it at this step (a retried publish re-logs nothing)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if any(metric.step == step for metric in client.get_metric_history(run_id, key)):
        return
    client.log_metric(run_id, key, value, step=step)


class MetricsBuffer:
    """Per-step metrics sent in batches: one `log_batch` request every `interval` seconds instead of a round
    trip to the tracking server inside every step, and always before a checkpoint is committed, so every metric
    up to a committed step is durable when a later attempt resumes from it."""

    MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch request

    def __init__(self, run_id: str, interval: float = 10.0, clock=None):
        self.run_id, self.interval = run_id, interval
        self.clock = clock or time.monotonic
        self.pending: list = []
        self.last_flush = self.clock()

    def add(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        self.pending.extend(Metric(key, float(value), timestamp, step) for key, value in metrics.items())
        if self.clock() - self.last_flush >= self.interval:
            self.flush()

    def flush(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        while self.pending:
            batch, self.pending = self.pending[:self.MAX_BATCH], self.pending[self.MAX_BATCH:]
            client.log_batch(self.run_id, metrics=batch)
        self.last_flush = self.clock()
