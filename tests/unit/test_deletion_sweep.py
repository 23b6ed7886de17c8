"""deletionPolicy Delete against the S3 protocol (moto): a write that lands after the first sweep, as a stopping
workload's checkpoint upload does, is swept by a later one; the cleanup ends only on a sweep that finds nothing,
and never touches a neighbour's prefix."""

from __future__ import annotations

import pytest

from kubeforge.controllers.deletion import sweep_prefix
from kubeforge.storage.layout import ResourcePrefix
from kubeforge.storage.objectstore import S3ObjectStore
from tests.moto_s3 import in_process_s3_store

BUCKET = "kubeforge"


@pytest.fixture
def store(monkeypatch):
    with in_process_s3_store(BUCKET, monkeypatch) as store:
        yield store


def put(store: S3ObjectStore, key: str) -> None:
    store.client.put_object(Bucket=BUCKET, Key=key, Body=b"x")


def keys(store: S3ObjectStore) -> set[str]:
    return set(store.list(BUCKET, ""))


def test_a_late_write_after_the_first_sweep_is_removed_by_the_next_and_only_an_empty_sweep_ends_it(store):
    deleted = ResourcePrefix.for_resource(BUCKET, "default", "FineTune", "ft")
    neighbour = ResourcePrefix.for_resource(BUCKET, "default", "FineTune", "ft-2")
    put(store, f"{deleted.prefix}/checkpoints/step-2/MANIFEST.json")
    put(store, deleted.progress_key)
    put(store, neighbour.progress_key)

    first = sweep_prefix(store, deleted, quiet_seconds=8)
    assert first is not None and "removed 2 objects" in first and "8 s" in first
    put(store, f"{deleted.prefix}/checkpoints/step-4/MANIFEST.json")  # an upload in flight at the stop lands

    assert sweep_prefix(store, deleted, quiet_seconds=8) is not None
    assert sweep_prefix(store, deleted, quiet_seconds=8) is None
    assert keys(store) == {neighbour.progress_key}


def test_a_resource_that_never_wrote_is_done_in_one_sweep(store):
    assert sweep_prefix(store, ResourcePrefix.for_resource(BUCKET, "default", "FineTune", "idle"), 30) is None
