"""The kopf layer: a pass runs when the previous one asked for it (requeue_after), not a timer tick later,
and a child name held by another owner delays the creation instead of adopting it."""

import copy
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import kopf
import pytest

from kubeforge.cluster import ChildNameTaken
from kubeforge.controllers import wiring
from kubeforge.settings import Settings
from tests.unit.test_batch_reconcile import OBJ

START = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
SETTINGS = Settings(bucket="kubeforge", reconcile_period_seconds=10, tick_seconds=1)


class FakeCluster:
    def __init__(self):
        self.created, self.deleted, self.taken, self.rayjobs = [], [], False, {}

    def rayjobs_of(self, namespace, uid):
        return self.rayjobs

    def get_resource(self, kind, namespace, name):
        return None

    def create_rayjob(self, body):
        if self.taken:
            raise ChildNameTaken("RayJob team/ft-1 belongs to another owner")
        self.created.append(body["metadata"]["name"])

    def delete_rayjob(self, namespace, name):
        self.deleted.append(name)


class EmptyStore:
    def get(self, bucket, key):
        return None


@pytest.fixture
def operator(monkeypatch):
    """The FineTune reconcile handler as kopf would call it, on a fake clock and fake clients."""
    cluster, clock, events = FakeCluster(), {"now": 1000.0}, []
    monkeypatch.setattr(wiring, "Cluster", lambda: cluster)
    monkeypatch.setattr(wiring, "S3ObjectStore", lambda endpoint_url=None: EmptyStore())
    monkeypatch.setattr(wiring.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(wiring, "utcnow", lambda: START + timedelta(seconds=clock["now"] - 1000.0))
    monkeypatch.setattr(wiring.kopf, "event", lambda body, type, reason, message: events.append(reason))
    registry = kopf.OperatorRegistry()
    wiring.register(SETTINGS, registry)
    handler = next(h for h in registry._spawning.get_all_handlers() if h.id == "reconcile")
    assert handler.interval == SETTINGS.tick_seconds
    obj = copy.deepcopy(OBJ)
    obj["spec"]["failurePolicy"]["backoff"] = {"initialSeconds": 3, "maxSeconds": 60}
    memo = kopf.Memo()

    def tick(seconds: float = 0):
        clock["now"] += seconds
        patch = kopf.Patch()
        handler.fn(body=obj, patch=patch, memo=memo)
        if "status" in patch:
            obj["status"] = {k: v for k, v in {**(obj.get("status") or {}), **patch["status"]}.items()
                             if v is not None}
        return patch

    return SimpleNamespace(tick=tick, cluster=cluster, events=events, obj=obj)


def test_the_child_is_created_on_the_tick_after_its_attempt_was_recorded(operator):
    assert operator.tick()["status"]["attempts"][0]["rayJob"] == "ft-1" and operator.cluster.created == []
    operator.tick(1)
    assert operator.cluster.created == ["ft-1"]


def test_between_due_passes_a_tick_does_nothing(operator):
    operator.tick(), operator.tick(1)
    assert not operator.tick(1) and not operator.tick(8)  # due a reconcile period (10 s) after the last pass
    operator.tick(1)
    assert operator.cluster.created == ["ft-1", "ft-1"]  # still missing in the fake: created again


def test_a_backoff_shorter_than_the_period_is_honoured(operator):
    operator.tick(), operator.tick(1)
    operator.cluster.rayjobs = {"ft-1": {"metadata": {"name": "ft-1"}, "status": {
        "jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "message": "NodeLost"}}}
    assert operator.tick(10)["status"]["phase"] == "Retrying"
    assert not operator.tick(2)
    assert operator.tick(1)["status"]["attempts"][1]["rayJob"] == "ft-2"  # 3 s after the failure, not 10


def test_a_name_held_by_another_owner_is_retried_soon_with_a_warning(operator):
    operator.cluster.taken = True
    operator.tick(), operator.tick(1)
    assert operator.cluster.created == [] and "ChildNameTaken" in operator.events
    assert not operator.tick(1)
    operator.cluster.taken = False
    operator.tick(1)
    assert operator.cluster.created == ["ft-1"]


def test_a_finished_resource_of_the_observed_generation_is_left_alone(operator):
    operator.obj["status"] = {"phase": "Succeeded", "observedGeneration": 1, "conditions": []}
    assert not operator.tick(100) and operator.cluster.created == []
    operator.obj["metadata"]["generation"] = 2  # edited: the new generation is acknowledged once
    assert operator.tick(1)["status"]["observedGeneration"] == 2
    assert not operator.tick(100)
