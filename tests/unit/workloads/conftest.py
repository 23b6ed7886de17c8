"""Workload unit-test fixtures: a FineTune's object store (moto's in-process S3 with the bucket created) and a
fresh MLflow store."""

from __future__ import annotations

import pytest

from kubeforge.api.workload import MlflowContext, StorageContext, WorkloadContext
from tests.moto_s3 import in_process_s3_store

BUCKET = "kfbucket"


def finetune_context(attempt: int) -> WorkloadContext:
    return WorkloadContext(kind="FineTune", namespace="ns", name="ft", uid="u", generation=1, attempt=attempt,
                           spec={}, storage=StorageContext(bucket=BUCKET, prefix="ns/FineTune/ft"),
                           mlflow=MlflowContext(experiment="e", run_name="ft"))


@pytest.fixture
def object_store(monkeypatch):
    with in_process_s3_store(BUCKET, monkeypatch) as store:
        yield store


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A fresh sqlite MLflow store, and none of the process-wide MLflow state earlier tests may have left behind."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # Experiments created without an artifact location store artifacts under ./mlruns: here, not in the checkout.
    monkeypatch.chdir(tmp_path)
    for leftover in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(leftover, raising=False)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)
