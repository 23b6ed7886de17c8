"""EvalRun row results in the object store: saved in batches, read back by a later attempt (the latest wins, rows of
another spec or inputs ignored), and the metric names the operator's gate reads."""

from __future__ import annotations

from kubeforge.api.workload import MlflowContext, StorageContext, WorkloadContext
from kubeforge_workloads.common.storage import WorkloadStorage
from kubeforge_workloads.evaluate.aggregate import headline_metrics, retrieval_metric_names
from kubeforge_workloads.evaluate.results import RowSaver, fingerprint, saved_rows
from tests.unit.workloads.conftest import BUCKET


def _storage(store, attempt: int) -> WorkloadStorage:
    context = WorkloadContext(kind="EvalRun", namespace="ns", name="ev", uid="u", generation=1, attempt=attempt,
                              spec={}, storage=StorageContext(bucket=BUCKET, prefix="ns/EvalRun/ev"),
                              mlflow=MlflowContext(experiment="e", run_name="ev"))
    return WorkloadStorage(context, store)


def test_rows_are_saved_in_batches_and_a_later_attempt_reads_the_latest(object_store):
    same = fingerprint({"a": 1}, {"endpoint": {"model": "m"}})
    assert same != fingerprint({"a": 1}, {"endpoint": {"model": "other"}})
    first = RowSaver(_storage(object_store, 1), same, flush_rows=2, flush_seconds=3600)
    first.add({"id": "1", "error": None})
    assert saved_rows(_storage(object_store, 2), same) == {}  # one row: not a batch yet
    first.add({"id": "2", "error": "judge: bad"})
    assert set(saved_rows(_storage(object_store, 2), same)) == {"1", "2"}
    second = RowSaver(_storage(object_store, 2), same, flush_rows=10, flush_seconds=3600)
    second.add({"id": "2", "error": None})
    second.flush()
    RowSaver(_storage(object_store, 3), "another-spec", flush_rows=1).add({"id": "3", "error": None})
    rows = saved_rows(_storage(object_store, 4), same)
    assert set(rows) == {"1", "2"} and rows["2"]["error"] is None


def test_metric_names_follow_the_api_docstring():
    one = retrieval_metric_names({"docs": {"ndcg@5": 0.5}})
    assert one == {"retrieval/docs/ndcg@5": 0.5, "retrieval/ndcg@5": 0.5}
    two = retrieval_metric_names({"small": {"ndcg@5": 0.5}, "large": {"ndcg@5": 0.7}})
    assert two == {"retrieval/small/ndcg@5": 0.5, "retrieval/large/ndcg@5": 0.7}
    rows = [{"error": None, "latency_seconds": s} for s in (1.0, 2.0, 3.0)] + [{"error": "x", "latency_seconds": None}]
    metrics = headline_metrics(rows, [], {}, answered=True)
    assert metrics == {"latency/p50Seconds": 2.0, "latency/p95Seconds": 2.9, "rows/failedFraction": 0.25}
