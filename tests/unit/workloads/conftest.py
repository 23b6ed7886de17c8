"""A FineTune's object store for workload unit tests: moto's in-process S3 with the bucket created."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from kubeforge.api.workload import MlflowContext, StorageContext, WorkloadContext
from kubeforge.storage.objectstore import S3ObjectStore

BUCKET = "kfbucket"


def finetune_context(attempt: int) -> WorkloadContext:
    return WorkloadContext(kind="FineTune", namespace="ns", name="ft", uid="u", generation=1, attempt=attempt,
                           spec={}, storage=StorageContext(bucket=BUCKET, prefix="ns/FineTune/ft"),
                           mlflow=MlflowContext(experiment="e", run_name="ft"))


@pytest.fixture
def object_store(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield S3ObjectStore(client)
