"""CRUD semantics from the API conventions: codes and Status bodies, uid, resourceVersion, generation,
status subresource, finalizers, garbage collection, patches."""

import json

import pytest
from kubernetes.client.exceptions import ApiException

from tests.conformance.conftest import finetune, raw

G, V, NS, P = "kubeforge.dev", "v1alpha1", "default", "finetunes"


def status_of(error: ApiException) -> dict:
    return json.loads(error.body)


def test_create_sets_server_fields_and_defaults(custom):
    obj = custom.create_namespaced_custom_object(G, V, NS, P, finetune("crud-create"))
    meta = obj["metadata"]
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]
    assert meta["generation"] == 1 and meta["namespace"] == NS
    assert obj["spec"]["failurePolicy"]["maxRestarts"] == 3  # CRD default applied
    assert obj["spec"]["method"] == "lora"


def test_get_missing_is_404_with_status_body(custom):
    with pytest.raises(ApiException) as info:
        custom.get_namespaced_custom_object(G, V, NS, P, "nope")
    body = status_of(info.value)
    assert info.value.status == 404 and body["kind"] == "Status" and body["reason"] == "NotFound"
    assert body["message"] == 'finetunes.kubeforge.dev "nope" not found'
    assert body["details"] == {"name": "nope", "group": G, "kind": "finetunes"}


def test_duplicate_create_is_409_already_exists(custom):
    custom.create_namespaced_custom_object(G, V, NS, P, finetune("crud-dup"))
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(G, V, NS, P, finetune("crud-dup"))
    assert info.value.status == 409 and status_of(info.value)["reason"] == "AlreadyExists"


def test_missing_namespace_is_404(custom):
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(G, V, "ghost", P, finetune("x"))
    assert info.value.status == 404 and 'namespaces "ghost" not found' in status_of(info.value)["message"]


def test_stale_resource_version_is_409_conflict(custom):
    obj = custom.create_namespaced_custom_object(G, V, NS, P, finetune("crud-conflict"))
    first = dict(obj)
    obj["spec"]["failurePolicy"] = {"maxRestarts": 1}  # spec fields that stay mutable after creation
    custom.replace_namespaced_custom_object(G, V, NS, P, "crud-conflict", obj)
    first["spec"]["failurePolicy"] = {"maxRestarts": 2}
    with pytest.raises(ApiException) as info:
        custom.replace_namespaced_custom_object(G, V, NS, P, "crud-conflict", first)
    assert info.value.status == 409 and status_of(info.value)["reason"] == "Conflict"
    assert "the object has been modified" in status_of(info.value)["message"]


def test_generation_bumps_on_spec_changes_only(custom):
    custom.create_namespaced_custom_object(G, V, NS, P, finetune("crud-gen"))
    labelled = custom.patch_namespaced_custom_object(G, V, NS, P, "crud-gen", {"metadata": {"labels": {"a": "b"}}})
    assert labelled["metadata"]["generation"] == 1
    status = custom.patch_namespaced_custom_object_status(G, V, NS, P, "crud-gen", {"status": {"phase": "Running"}})
    assert status["metadata"]["generation"] == 1 and status["status"]["phase"] == "Running"
    changed = custom.patch_namespaced_custom_object(G, V, NS, P, "crud-gen", {"spec": {"deletionPolicy": "Delete"}})
    assert changed["metadata"]["generation"] == 2
    assert int(changed["metadata"]["resourceVersion"]) > int(labelled["metadata"]["resourceVersion"])


def test_status_subresource_separates_spec_and_status(custom):
    custom.create_namespaced_custom_object(G, V, NS, P, finetune("crud-status"))
    main = custom.patch_namespaced_custom_object(G, V, NS, P, "crud-status", {"status": {"phase": "Hacked"}})
    assert "status" not in main or main["status"].get("phase") != "Hacked"
    sub = custom.patch_namespaced_custom_object_status(G, V, NS, P, "crud-status",
                                                       {"spec": {"method": "full"}, "status": {"phase": "Running"}})
    assert sub["spec"]["method"] == "lora" and sub["status"]["phase"] == "Running"


def test_finalizers_hold_deletion_until_removed(custom):
    body = finetune("crud-final")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    custom.create_namespaced_custom_object(G, V, NS, P, body)
    deleted = custom.delete_namespaced_custom_object(G, V, NS, P, "crud-final")
    assert deleted["metadata"]["deletionTimestamp"]
    still = custom.get_namespaced_custom_object(G, V, NS, P, "crud-final")
    assert still["metadata"]["deletionTimestamp"]
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object(G, V, NS, P, "crud-final",
                                              {"metadata": {"finalizers": ["example.com/hold", "new/one"]}})
    assert info.value.status == 422
    custom.patch_namespaced_custom_object(G, V, NS, P, "crud-final", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as gone:
        custom.get_namespaced_custom_object(G, V, NS, P, "crud-final")
    assert gone.value.status == 404


def test_owner_reference_cascade_and_orphan(custom, core):
    owner = custom.create_namespaced_custom_object(G, V, NS, P, finetune("crud-owner"))
    ref = {"apiVersion": "kubeforge.dev/v1alpha1", "kind": "FineTune", "name": "crud-owner",
           "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    core.create_namespaced_config_map(NS, {"metadata": {"name": "child-a", "ownerReferences": [ref]}})
    custom.delete_namespaced_custom_object(G, V, NS, P, "crud-owner")
    with pytest.raises(ApiException):
        core.read_namespaced_config_map("child-a", NS)

    owner = custom.create_namespaced_custom_object(G, V, NS, P, finetune("crud-owner2"))
    ref["uid"], ref["name"] = owner["metadata"]["uid"], "crud-owner2"
    core.create_namespaced_config_map(NS, {"metadata": {"name": "child-b", "ownerReferences": [ref]}})
    custom.delete_namespaced_custom_object(G, V, NS, P, "crud-owner2", propagation_policy="Orphan")
    kept = core.read_namespaced_config_map("child-b", NS)
    assert not kept.metadata.owner_references


def test_merge_and_json_patch_and_415_for_strategic_on_custom_resources(custom, server):
    custom.create_namespaced_custom_object(G, V, NS, P, finetune("crud-patch"))
    patched = custom.patch_namespaced_custom_object(G, V, NS, P, "crud-patch", [
        {"op": "replace", "path": "/spec/deletionPolicy", "value": "Delete"}],
        _content_type="application/json-patch+json")
    assert patched["spec"]["deletionPolicy"] == "Delete"
    response = raw(server, "PATCH", f"/apis/{G}/{V}/namespaces/{NS}/{P}/crud-patch", {"spec": {"method": "lora"}},
                   "application/strategic-merge-patch+json")
    assert response.status_code == 415 and response.json()["reason"] == "UnsupportedMediaType"


def test_secret_string_data_is_stored_base64(core):
    core.create_namespaced_secret(NS, {"metadata": {"name": "s1"}, "stringData": {"K": "value"}})
    secret = core.read_namespaced_secret("s1", NS)
    assert secret.data == {"K": "dmFsdWU="} and not secret.string_data


def test_label_and_field_selectors(custom):
    for name, team in (("sel-a", "x"), ("sel-b", "y"), ("sel-c", "x")):
        body = finetune(name)
        body["metadata"]["labels"] = {"team": team}
        custom.create_namespaced_custom_object(G, V, NS, P, body)
    names = lambda **kw: sorted(i["metadata"]["name"] for i in custom.list_namespaced_custom_object(G, V, NS, P, **kw)["items"])
    assert names(label_selector="team=x") == ["sel-a", "sel-c"]
    assert names(label_selector="team in (y)") == ["sel-b"]
    assert "sel-a" not in names(label_selector="team!=x")
    assert names(field_selector="metadata.name=sel-b") == ["sel-b"]
    listed = custom.list_namespaced_custom_object(G, V, NS, P, label_selector="team", limit=2)
    assert len(listed["items"]) == 2 and listed["metadata"]["continue"]


def test_schema_violations_are_422_with_field_messages(custom):
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(G, V, NS, P, finetune("bad", method="dora",
                                                                    failurePolicy={"maxRestarts": -1}))
    body = status_of(info.value)
    assert info.value.status == 422 and body["reason"] == "Invalid"
    assert 'spec.method: Unsupported value: "dora": supported values: "lora", "qlora", "full"' in body["message"]
    assert "spec.failurePolicy.maxRestarts in body should be greater than or equal to 0" in body["message"]
    # An unsupported enum value skips the CEL rules, and the real server says so in a last cause.
    assert {c["field"] for c in body["details"]["causes"]} == {"spec.method", "spec.failurePolicy.maxRestarts", "<nil>"}
    assert body["message"].endswith('<nil>: Invalid value: "null": some validation rules were not checked because '
                                    'the object was invalid; correct the existing errors to complete validation]')


def test_cel_rules_are_enforced(custom):
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(G, V, NS, P, finetune("bad-cel", method="qlora"))
    assert info.value.status == 422 and "qlora needs GPUs" in status_of(info.value)["message"]
    ok = finetune("good-cel", method="qlora", resources={"gpusPerWorker": 1})
    assert custom.create_namespaced_custom_object(G, V, NS, P, ok)["spec"]["method"] == "qlora"


def test_unknown_fields_are_pruned_or_rejected_when_strict(custom, server):
    body = finetune("prune-me")
    body["spec"]["surprise"] = 1
    created = custom.create_namespaced_custom_object(G, V, NS, P, body)
    assert "surprise" not in created["spec"]
    body["metadata"]["name"] = "strict-me"
    response = raw(server, "POST", f"/apis/{G}/{V}/namespaces/{NS}/{P}", body, fieldValidation="Strict")
    # As kube-apiserver: a strict decoding error is 400 BadRequest, not 422.
    assert response.status_code == 400 and response.json()["reason"] == "BadRequest"
    assert response.json()["message"] == ('FineTune in version "v1alpha1" cannot be handled as a FineTune: '
                                          'strict decoding error: unknown field "spec.surprise"')
    body["metadata"]["name"] = "warn-me"
    warned = raw(server, "POST", f"/apis/{G}/{V}/namespaces/{NS}/{P}", body, fieldValidation="Warn")
    assert warned.status_code == 201 and 'unknown field \\"spec.surprise\\"' in warned.headers["Warning"]
    body["metadata"]["name"] = "ignore-me"
    ignored = raw(server, "POST", f"/apis/{G}/{V}/namespaces/{NS}/{P}", body, fieldValidation="Ignore")
    assert ignored.status_code == 201 and "Warning" not in ignored.headers


def test_crds_registered_through_the_api_are_served(api_client, custom):
    ext = __import__("kubernetes").client.ApiextensionsV1Api(api_client)
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.example.com"},
           "spec": {"group": "example.com", "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
                    "versions": [{"name": "v1", "served": True, "storage": True,
                                  "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                      "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}}]}}
    created = ext.create_custom_resource_definition(crd)
    conditions = {c.type: c.status for c in created.status.conditions}
    assert conditions["Established"] == "True"
    custom.create_namespaced_custom_object("example.com", "v1", NS, "widgets",
                                           {"apiVersion": "example.com/v1", "kind": "Widget",
                                            "metadata": {"name": "w"}, "spec": {"size": 3}})
    ext.delete_custom_resource_definition("widgets.example.com")
    with pytest.raises(ApiException) as info:
        custom.list_namespaced_custom_object("example.com", "v1", NS, "widgets")
    assert info.value.status == 404
