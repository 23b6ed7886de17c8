"""One MLflow run per resource, in the resource's experiment, whoever wins the race to create the experiment."""

from __future__ import annotations

import pytest

mlflow = pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from kubeforge.api.workload import WorkloadContext  # noqa: E402
from kubeforge_workloads.common.tracking import ensure_experiment, start_run  # noqa: E402


def context(tracking_uri: str, attempt: int = 1, experiment: str = "team-a/FineTune") -> WorkloadContext:
    return WorkloadContext(kind="FineTune", namespace="team-a", name="docs", uid="uid-docs", generation=1,
                           attempt=attempt, spec={}, storage={"bucket": "b", "prefix": "team-a/FineTune/docs"},
                           mlflow={"experiment": experiment, "run_name": "docs", "tracking_uri": tracking_uri})


class LosesTheCreateRace(MlflowClient):
    """Another attempt creates the experiment between our lookup and our create, as on a real server."""

    def __init__(self, tracking_uri: str):
        super().__init__(tracking_uri)
        self.looked_up = 0

    def get_experiment_by_name(self, name):
        self.looked_up += 1
        if self.looked_up == 1:
            MlflowClient(self._tracking_client.tracking_uri).create_experiment(name)
            return None
        return super().get_experiment_by_name(name)


def test_ensure_experiment_returns_the_winners_id_after_losing_the_create_race(tracking_uri):
    client = LosesTheCreateRace(tracking_uri)
    experiment_id = ensure_experiment(client, "team-a/FineTune")
    assert experiment_id == MlflowClient(tracking_uri).get_experiment_by_name("team-a/FineTune").experiment_id
    assert client.looked_up == 2


def test_mlflow_set_experiment_loses_the_race_silently(tracking_uri, monkeypatch):
    """Why tracking does not use mlflow.set_experiment: after losing the race the active experiment stays unset
    and the run lands in Default. If MLflow fixes this, this test fails and ensure_experiment can go."""
    monkeypatch.setattr(mlflow.tracking._tracking_service.client.TrackingServiceClient, "get_experiment_by_name",
                        _first_lookup_races(mlflow.tracking._tracking_service.client.TrackingServiceClient
                                            .get_experiment_by_name))
    mlflow.set_experiment("team-a/FineTune")
    with mlflow.start_run() as run:
        pass
    named = MlflowClient(tracking_uri).get_experiment_by_name("team-a/FineTune")
    assert run.info.experiment_id != named.experiment_id


def _first_lookup_races(original):
    calls = []

    def lookup(self, name):
        calls.append(name)
        if len(calls) == 1:
            MlflowClient().create_experiment(name)
            return None
        return original(self, name)
    return lookup


def test_first_attempt_creates_the_run_in_the_resource_experiment(tracking_uri):
    run_id = start_run(context(tracking_uri), {"method": "lora"})
    mlflow.end_run()
    run = MlflowClient(tracking_uri).get_run(run_id)
    assert run.info.experiment_id == MlflowClient(tracking_uri).get_experiment_by_name("team-a/FineTune").experiment_id
    assert run.data.params["method"] == "lora"
    assert run.data.tags["kubeforge.uid"] == "uid-docs"


def test_later_attempts_continue_the_same_run(tracking_uri):
    first = start_run(context(tracking_uri, attempt=1), {"method": "lora"})
    mlflow.end_run()
    found_by_tag = start_run(context(tracking_uri, attempt=2), {"method": "lora"})
    mlflow.end_run()
    remembered = start_run(context(tracking_uri, attempt=3), {"method": "lora"}, remembered_run_id=first)
    mlflow.end_run()
    assert first == found_by_tag == remembered
    run = MlflowClient(tracking_uri).get_run(first)
    assert run.data.tags["kubeforge.attempt"] == "3"
    assert {"attempt_1_generation", "attempt_2_generation", "attempt_3_generation"} <= set(run.data.params)


def test_a_remembered_run_is_continued_even_after_the_experiment_setting_changed(tracking_uri):
    first = start_run(context(tracking_uri, experiment="old"), {})
    mlflow.end_run()
    again = start_run(context(tracking_uri, attempt=2, experiment="new"), {}, remembered_run_id=first)
    mlflow.end_run()
    assert again == first


def test_metrics_buffer_sends_on_interval_and_on_flush(tracking_uri):
    from kubeforge_workloads.common.tracking import MetricsBuffer

    run_id = start_run(context(tracking_uri), {})
    mlflow.end_run()
    now = [0.0]
    buffer = MetricsBuffer(run_id, interval=10.0, clock=lambda: now[0])
    client = MlflowClient(tracking_uri)
    for step in range(1, 4):
        buffer.add({"loss": 1.0 / step}, step)
    assert client.get_metric_history(run_id, "loss") == []  # nothing sent before the interval
    now[0] = 10.0
    buffer.add({"loss": 0.25}, 4)
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 4]
    buffer.add({"loss": 0.2, "learning_rate": 0.001}, 5)
    buffer.flush()
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history][-1] == (5, 0.2)
    assert buffer.pending == []


def test_metrics_buffer_splits_batches_at_mlflows_limit(tracking_uri):
    from kubeforge_workloads.common.tracking import MetricsBuffer

    run_id = start_run(context(tracking_uri), {})
    mlflow.end_run()
    buffer = MetricsBuffer(run_id, interval=1e9)
    for step in range(MetricsBuffer.MAX_BATCH + 5):
        buffer.add({"loss": float(step)}, step)
    buffer.flush()
    assert len(MlflowClient(tracking_uri).get_metric_history(run_id, "loss")) == MetricsBuffer.MAX_BATCH + 5
