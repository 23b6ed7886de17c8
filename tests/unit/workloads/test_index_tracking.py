"""Every VectorIndex sync is one MLflow run (real MLflow, sqlite store): params say what was built with what, metrics
what the sync did, the manifest is an artifact; a retried sync of the same version continues that version's run."""

from __future__ import annotations

import pytest

mlflow = pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from kubeforge.api.vectorindex import VectorIndexSpec  # noqa: E402
from kubeforge.api.workload import WorkloadContext  # noqa: E402
from kubeforge_workloads.index.tracking import MANIFEST_ARTIFACT, log_sync  # noqa: E402

SPEC = VectorIndexSpec.model_validate({"source": {"uri": "s3://b/docs/"}, "chunking": {"size": 128, "overlap": 16}})


def context(tracking_uri: str, attempt: int = 1) -> WorkloadContext:
    return WorkloadContext(kind="VectorIndex", namespace="team-a", name="docs", uid="uid-docs", generation=2,
                           attempt=attempt, spec={}, storage={"bucket": "b", "prefix": "team-a/VectorIndex/docs"},
                           mlflow={"experiment": "team-a/VectorIndex", "run_name": "docs",
                                   "tracking_uri": tracking_uri})


def result(version: int, unchanged: bool = False, embedded: int = 7) -> dict:
    sync = {"embeddedDocuments": 2, "reusedDocuments": 3, "deletedDocuments": 1, "addedDocuments": 1,
            "changedDocuments": 1, "embeddedChunks": embedded, "resumedChunks": 0, "reusedChunks": 9}
    if unchanged:
        sync = {**{key: 0 for key in sync}, "reusedDocuments": 5, "reusedChunks": 16}
    return {"version": version, "documents": 5, "chunks": 16, "dims": 384, "recall": 1.0, "recallK": 10,
            "skipped": {"invalidUtf8": {"count": 1, "examples": ["x.txt: ..."]}}, "skippedDocuments": 1,
            "sync": sync, "unchanged": unchanged}


def manifest(version: int) -> dict:
    return {"version": version, "documents": 5, "chunks": 16, "files": {"chunks.parquet": {"size": 10}}}


def runs(tracking_uri: str) -> list:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("team-a/VectorIndex")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_a_sync_is_one_run_with_its_counts_model_version_and_manifest(tracking_uri):
    run_id = log_sync(context(tracking_uri), SPEC, result(3), manifest(3), build_seconds=12.5)
    (run,) = runs(tracking_uri)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.params["version"] == "3" and run.data.params["embedding_model"] == SPEC.embedding.model
    assert (run.data.params["chunking_size"], run.data.params["index_type"]) == ("128", SPEC.index.type.value)
    metrics = run.data.metrics
    assert (metrics["documents"], metrics["chunks"], metrics["skipped_documents"], metrics["build_seconds"]) == \
        (5, 16, 1, 12.5)
    assert (metrics["embedded_chunks"], metrics["reused_chunks"], metrics["skipped_invalidUtf8"]) == (7, 9, 1)
    assert run.data.tags["kubeforge.indexVersion"] == "3" and run.data.tags["kubeforge.uid"] == "uid-docs"
    artifact = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{MANIFEST_ARTIFACT}")
    assert artifact == manifest(3)


def test_each_sync_gets_its_own_run_and_a_retried_version_continues_its_run(tracking_uri):
    first = log_sync(context(tracking_uri), SPEC, result(1), manifest(1), build_seconds=30)
    # attempt 1 of the second sync committed version 2 and was killed before recording its result; attempt 2
    # logs version 2 again (into the same run, not a second one)
    second = log_sync(context(tracking_uri, attempt=1), SPEC, result(2, embedded=3), manifest(2), build_seconds=9)
    again = log_sync(context(tracking_uri, attempt=2), SPEC, result(2, embedded=3), manifest(2), build_seconds=11)
    unchanged = log_sync(context(tracking_uri, attempt=1), SPEC, result(2, unchanged=True), manifest(2),
                         build_seconds=1)
    assert again == second and len({first, second, unchanged}) == 3
    by_id = {run.info.run_id: run for run in runs(tracking_uri)}
    assert len(by_id) == 3
    assert by_id[second].data.tags["kubeforge.attempt"] == "2" and by_id[second].data.metrics["build_seconds"] == 11
    assert by_id[unchanged].data.tags["kubeforge.unchanged"] == "true"
    assert by_id[unchanged].data.metrics["embedded_chunks"] == 0


def test_an_mlflow_failure_after_the_commit_is_reported_in_the_result_not_raised(object_store, tmp_path, capsys,
                                                                                 monkeypatch):
    import json

    from kubeforge_workloads.common.storage import WorkloadStorage
    from kubeforge_workloads.index.build import _track
    from tests.unit.workloads.conftest import BUCKET

    monkeypatch.chdir(tmp_path)  # were the store usable, artifacts of an experiment would go to ./mlruns
    (tmp_path / "a-file").write_text("")
    unreachable = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"  # a store that cannot be opened
    ctx = context(unreachable)
    ctx.storage.bucket = BUCKET
    storage = WorkloadStorage(ctx, object_store)
    object_store.put(BUCKET, storage.prefix.index_manifest_key(3), json.dumps(manifest(3)).encode())
    outcome = _track(ctx, SPEC, storage, {**result(3), "buildSeconds": 4.0})
    assert set(outcome) == {"trackingError"} and outcome["trackingError"].startswith("could not log the sync")
    assert "could not log the sync to MLflow" in capsys.readouterr().out
