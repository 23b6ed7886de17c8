"""Workload unit-test fixtures: a FineTune's object store (moto's in-process S3 with the bucket created) and a
fresh MLflow store."""

from __future__ import annotations

import contextlib
from pathlib import Path

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


@contextlib.contextmanager
def isolated_mlflow(directory: Path, monkeypatch):
    """A fresh sqlite MLflow store in `directory`, and none of the process-wide MLflow state earlier tests may have
    left behind; the previous tracking URI comes back afterwards."""
    import mlflow

    uri = f"sqlite:///{directory / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # Experiments created without an artifact location store artifacts under ./mlruns: here, not in the checkout.
    monkeypatch.chdir(directory)
    for leftover in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(leftover, raising=False)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(previous)


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    with isolated_mlflow(tmp_path, monkeypatch) as uri:
        yield uri


def run_to_end(job):
    """Run a training job in this process; whatever it raises, no MLflow run stays active for the next one."""
    import mlflow

    try:
        job.run()
    finally:
        while mlflow.active_run():
            mlflow.end_run()
    return job
