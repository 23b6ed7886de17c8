"""What a pass looks at: the current attempt's RayJob, heartbeat and failure report; and how a child is adopted."""

import copy
import json

import pytest
from kubernetes.client.exceptions import ApiException

from kubeforge.cluster import ChildNameTaken, Cluster
from kubeforge.controllers.finetune import FineTuneKind
from kubeforge.controllers.observe import latest_status_patch, observe
from kubeforge.dev.apiserver.patch import merge_patch
from kubeforge.settings import Settings
from kubeforge.storage.layout import ResourcePrefix
from tests.unit.test_batch_reconcile import OBJ

SETTINGS = Settings(bucket="kubeforge")


class MemoryStore:
    def __init__(self, objects):
        self.objects, self.reads = dict(objects), []

    def get(self, bucket, key):
        self.reads.append(key)
        return self.objects.get(key)


class FakeCluster:
    def __init__(self, rayjobs):
        self.rayjobs = rayjobs

    def rayjobs_of(self, namespace, uid):
        return self.rayjobs

    def get_resource(self, kind, namespace, name):
        return None


def failure(attempt, reason, message):
    return json.dumps({"attempt": attempt, "exitCode": 75, "reason": reason, "message": message}).encode()


def with_attempts(count):
    obj = copy.deepcopy(OBJ)
    obj["status"] = {"attempts": [{"number": n, "rayJob": f"ft-{n}", "outcome": "Failed" if n < count else "Running"}
                                  for n in range(1, count + 1)]}
    return obj


@pytest.mark.parametrize("job_status", [{"jobDeploymentStatus": "Failed", "jobStatus": "FAILED"},
                                        {"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"}])
def test_the_failure_report_read_is_the_current_attempts(job_status):
    layout = ResourcePrefix.for_resource("kubeforge", "team", "FineTune", "ft", None)
    store = MemoryStore({layout.failure_key(1): failure(1, "OutOfMemory", "first"),
                         layout.failure_key(3): failure(3, "NodeCheckFailed", "third")})
    observed = observe(FineTuneKind(), with_attempts(3), FakeCluster({"ft-3": {"status": job_status}}), store,
                       SETTINGS)
    assert observed.failure_report.attempt == 3 and observed.failure_report.message == "third"


def test_a_running_attempt_reads_no_failure_report_or_result():
    store = MemoryStore({})
    observe(FineTuneKind(), with_attempts(1), FakeCluster({"ft-1": {"status": {"jobStatus": "RUNNING"}}}), store,
            SETTINGS)
    assert [key.rsplit("/", 1)[-1] for key in store.reads] == ["progress.json"]


def test_nested_keys_the_reconcile_dropped_are_removed_on_the_server():
    old = {"phase": "Running", "progress": {"step": 5, "etaSeconds": 30, "summary": "5/9"},
           "output": {"a": 1}, "kopf": {"x": 1}}
    new = {"phase": "Running", "progress": {"step": 6, "summary": "6/9"}}
    assert latest_status_patch(old, new) == {"progress": {"step": 6, "etaSeconds": None, "summary": "6/9"},
                                             "output": None}
    assert latest_status_patch({"progress": {"step": 1}}, {"progress": {"step": 1}}) is None


@pytest.mark.parametrize("old,new", [
    ({"a": {"b": {"c": 1, "d": 2}}, "e": [1]}, {"a": {"b": {"c": 1}}, "e": [2]}),
    ({"a": {"b": 1}}, {"a": {}}),
    ({}, {"a": {"b": {"c": 1}}}),
    ({"a": 1, "b": {"c": 2}}, {"b": 3}),
])
def test_applying_the_patch_gives_exactly_the_computed_status(old, new):
    assert merge_patch(old, latest_status_patch(old, new) or {}) == new  # as the API server applies it


class FakeApi:
    def __init__(self, existing):
        self.existing, self.created = existing, []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        if self.existing is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        self.created.append(body)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        if self.existing is None:
            raise ApiException(status=404, reason="NotFound")
        return self.existing


def child(owner_uid, deleting=False):
    meta = {"name": "ft-1", "namespace": "team", "ownerReferences": [{"uid": owner_uid}]}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-24T12:00:00Z"
    return {"metadata": meta}


def test_an_existing_child_is_adopted_only_when_its_owner_uid_matches():
    Cluster(FakeApi(child("new-uid"))).create_rayjob(child("new-uid"))  # ours: adopted silently
    with pytest.raises(ChildNameTaken, match="being deleted.*another owner \\(uid old-uid\\)"):
        Cluster(FakeApi(child("old-uid", deleting=True))).create_rayjob(child("new-uid"))
    api = FakeApi(None)
    Cluster(api).create_rayjob(child("new-uid"))
    assert len(api.created) == 1
