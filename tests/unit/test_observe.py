"""The status patch a pass sends, and how a child is adopted (what a pass reads: test_resource_loop.py)."""

import pytest
from kubernetes.client.exceptions import ApiException

from kubeforge.cluster import Cluster
from kubeforge.controllers.errors import ChildNameTaken
from kubeforge.controllers.observe import latest_status_patch
from kubeforge.dev.apiserver.patch import merge_patch


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
