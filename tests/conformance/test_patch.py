"""PATCH formats and server-side apply: merge patch, JSON patch, strategic merge patch (built-ins only; 415 for
custom resources), apply with fieldManager/force, managedFields and conflicts between managers."""

import json

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.conformance.conftest import gadget, raw

G, V, NS, P = "conformance.kubeforge.dev", "v1", "default", "gadgets"
BASE = f"/apis/{G}/{V}/namespaces/{NS}/{P}"
APPLY = "application/apply-patch+yaml"


def apply(server, name, spec, manager, force=False, **extra):
    body = yaml.safe_dump(gadget(name, **spec) | extra)
    query = {"fieldManager": manager}
    if force:
        query["force"] = "true"
    return raw(server, "PATCH", f"{BASE}/{name}", body, APPLY, **query)


def managers(obj) -> dict:
    return {(m["manager"], m["operation"]): m["fieldsV1"] for m in obj["metadata"].get("managedFields", [])}


def test_apply_creates_then_merges_and_is_idempotent(server):
    created = apply(server, "ssa", {"color": "red", "tags": ["a"]}, "alice")
    assert created.status_code == 201
    obj = created.json()
    assert managers(obj)[("alice", "Apply")] == {"f:spec": {"f:color": {}, "f:tags": {}}}
    again = apply(server, "ssa", {"color": "red", "tags": ["a"]}, "alice")
    assert again.status_code == 200
    assert again.json()["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]


def test_apply_requires_a_field_manager(server):
    response = raw(server, "PATCH", f"{BASE}/nomanager", yaml.safe_dump(gadget("nomanager")), APPLY)
    assert response.status_code == 422 and "fieldManager: Required value" in response.json()["message"]


def test_apply_conflicts_between_managers_and_force(server):
    apply(server, "ssa-c", {"color": "red"}, "alice")
    conflict = apply(server, "ssa-c", {"color": "blue"}, "bob")
    assert conflict.status_code == 409
    status = conflict.json()
    assert status["reason"] == "Conflict"
    assert status["message"] == f'Apply failed with 1 conflict: conflict with "alice" using {G}/{V}: .spec.color'
    assert status["details"]["causes"] == [{"reason": "FieldManagerConflict", "field": ".spec.color",
                                            "message": f'conflict with "alice" using {G}/{V}'}]
    shared = apply(server, "ssa-c", {"color": "red"}, "bob")  # same value: co-ownership, no conflict
    assert shared.status_code == 200
    forced = apply(server, "ssa-c", {"color": "green"}, "bob", force=True)
    assert forced.status_code == 200 and forced.json()["spec"]["color"] == "green"
    owners = managers(forced.json())
    assert ("alice", "Apply") not in owners and owners[("bob", "Apply")] == {"f:spec": {"f:color": {}}}


def test_apply_removes_fields_the_manager_stopped_applying(server):
    apply(server, "ssa-r", {"color": "red", "name": "abc", "tags": ["x"]}, "alice")
    dropped = apply(server, "ssa-r", {"color": "red"}, "alice").json()
    assert "name" not in dropped["spec"] and "tags" not in dropped["spec"]
    assert dropped["spec"]["size"] == 3  # defaults stay


def test_updates_are_recorded_per_manager(server, custom):
    apply(server, "ssa-u", {"color": "red"}, "alice")
    patched = raw(server, "PATCH", f"{BASE}/ssa-u", {"spec": {"color": "blue"}}, "application/merge-patch+json",
                  fieldManager="editor").json()
    owners = managers(patched)
    assert owners[("editor", "Update")] == {"f:spec": {"f:color": {}}}
    assert ("alice", "Apply") not in owners  # an update takes ownership of what it changed
    conflict = apply(server, "ssa-u", {"color": "red"}, "alice")
    assert conflict.status_code == 409 and 'conflict with "editor"' in conflict.json()["message"]


def test_merge_patch_null_deletes_and_json_patch_ops(server, custom):
    custom.create_namespaced_custom_object(G, V, NS, P, gadget("mp", name="abc", tags=["a"]))
    merged = custom.patch_namespaced_custom_object(G, V, NS, P, "mp", {"spec": {"name": None}})
    assert "name" not in merged["spec"]
    patched = custom.patch_namespaced_custom_object(G, V, NS, P, "mp", [
        {"op": "add", "path": "/spec/tags/-", "value": "b"},
        {"op": "test", "path": "/spec/color", "value": "red"}], _content_type="application/json-patch+json")
    assert patched["spec"]["tags"] == ["a", "b"]
    failed = raw(server, "PATCH", f"{BASE}/mp", [{"op": "test", "path": "/spec/color", "value": "blue"}],
                 "application/json-patch+json")
    assert failed.status_code == 422


def test_strategic_merge_patch_is_415_for_custom_resources_and_works_for_built_ins(server, core):
    response = raw(server, "PATCH", f"{BASE}/mp", {"spec": {"color": "blue"}}, "application/strategic-merge-patch+json")
    assert response.status_code == 415 and response.json()["reason"] == "UnsupportedMediaType"
    core.create_namespaced_pod(NS, {"metadata": {"name": "smp"}, "spec": {"containers": [
        {"name": "a", "image": "one", "env": [{"name": "X", "value": "1"}]}, {"name": "b", "image": "two"}]}})
    patched = raw(server, "PATCH", f"/api/v1/namespaces/{NS}/pods/smp", {"spec": {"containers": [
        {"name": "a", "env": [{"name": "Y", "value": "2"}]}, {"name": "b", "$patch": "delete"}]}},
        "application/strategic-merge-patch+json").json()
    containers = patched["spec"]["containers"]
    assert [c["name"] for c in containers] == ["a"] and containers[0]["image"] == "one"
    assert containers[0]["env"] == [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]


def test_patch_with_stale_resource_version_conflicts(custom):
    obj = custom.create_namespaced_custom_object(G, V, NS, P, gadget("mp-rv"))
    custom.patch_namespaced_custom_object(G, V, NS, P, "mp-rv", {"spec": {"size": 4}})
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object(G, V, NS, P, "mp-rv", {
            "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "spec": {"size": 5}})
    assert info.value.status == 409 and json.loads(info.value.body)["reason"] == "Conflict"


def test_put_without_resource_version_on_a_custom_resource_is_invalid(server, core):
    """Custom resources do not allow unconditional updates; most built-ins (here ConfigMaps) do."""
    raw(server, "POST", f"{BASE}", gadget("put-norv"))
    response = raw(server, "PUT", f"{BASE}/put-norv", gadget("put-norv", size=2))
    assert response.status_code == 422
    assert "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update" in response.json()["message"]
    core.create_namespaced_config_map(NS, {"metadata": {"name": "put-norv"}, "data": {"a": "1"}})
    replaced = core.replace_namespaced_config_map("put-norv", NS, {"metadata": {"name": "put-norv"}, "data": {"a": "2"}})
    assert replaced.data == {"a": "2"}
