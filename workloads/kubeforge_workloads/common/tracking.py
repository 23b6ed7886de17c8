"""MLflow: one run per resource, continued by every attempt; model registration."""

from __future__ import annotations

from typing import Optional

from kubeforge.api.workload import WorkloadContext


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


def register(name: str, run_id: str, artifact_path: str, description: Optional[str] = None) -> str:
    """Register run artifacts (a Hugging Face directory) as a new model version; returns the version."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        client.create_registered_model(name, description=description)
    except MlflowException as error:
        if "already exists" not in str(error).lower() and "RESOURCE_ALREADY_EXISTS" not in str(error):
            raise
    run = client.get_run(run_id)
    source = f"{run.info.artifact_uri}/{artifact_path}"
    version = client.create_model_version(name, source=source, run_id=run_id, description=description)
    return str(version.version)
