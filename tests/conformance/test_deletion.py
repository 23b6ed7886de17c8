"""Finalizers and deletion, ownerReference garbage collection (background, foreground, orphan), namespace
deletion, and what DELETE answers."""


import pytest
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from tests.conformance.conftest import gadget, raw, status_of

G, V, NS, P = "conformance.kubeforge.dev", "v1", "default", "gadgets"


def exists(fn, *args) -> bool:
    try:
        fn(*args)
        return True
    except ApiException as error:
        assert error.status == 404
        return False


def owner_ref(obj, block=True) -> dict:
    return {"apiVersion": f"{G}/{V}", "kind": "Gadget", "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": block}


def test_watch_sees_modified_then_deleted_when_finalizers_clear(custom):
    rv = custom.list_namespaced_custom_object(G, V, NS, P)["metadata"]["resourceVersion"]
    body = gadget("fin-watch")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    custom.create_namespaced_custom_object(G, V, NS, P, body)
    deleting = custom.delete_namespaced_custom_object(G, V, NS, P, "fin-watch")
    assert deleting["metadata"]["deletionTimestamp"] and deleting["metadata"]["deletionGracePeriodSeconds"] == 0
    custom.patch_namespaced_custom_object(G, V, NS, P, "fin-watch", {"metadata": {"finalizers": []}})
    seen = [(e["type"], bool(e["object"]["metadata"].get("deletionTimestamp"))) for e in watch.Watch().stream(
        custom.list_namespaced_custom_object, G, V, NS, P, resource_version=rv, timeout_seconds=1,
        field_selector="metadata.name=fin-watch")]
    assert seen == [("ADDED", False), ("MODIFIED", True), ("DELETED", True)]


def test_no_new_finalizers_on_an_object_being_deleted(custom):
    body = gadget("fin-add")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    custom.create_namespaced_custom_object(G, V, NS, P, body)
    custom.delete_namespaced_custom_object(G, V, NS, P, "fin-add")
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object(G, V, NS, P, "fin-add",
                                              {"metadata": {"finalizers": ["example.com/hold", "example.com/new"]}})
    assert info.value.status == 422 and "metadata.finalizers: Forbidden" in status_of(info.value)["message"]
    custom.patch_namespaced_custom_object(G, V, NS, P, "fin-add", {"metadata": {"finalizers": None}})
    assert not exists(custom.get_namespaced_custom_object, G, V, NS, P, "fin-add")


def test_background_cascade_respects_dependent_finalizers(custom, core):
    owner = custom.create_namespaced_custom_object(G, V, NS, P, gadget("bg-owner"))
    core.create_namespaced_config_map(NS, {"metadata": {"name": "bg-child", "ownerReferences": [owner_ref(owner)]}})
    held = gadget("bg-held")
    held["metadata"].update(ownerReferences=[owner_ref(owner)], finalizers=["example.com/hold"])
    custom.create_namespaced_custom_object(G, V, NS, P, held)
    other = custom.create_namespaced_custom_object(G, V, NS, P, gadget("bg-other"))
    two = gadget("bg-two-owners")
    two["metadata"]["ownerReferences"] = [owner_ref(owner), owner_ref(other)]
    custom.create_namespaced_custom_object(G, V, NS, P, two)
    custom.delete_namespaced_custom_object(G, V, NS, P, "bg-owner")
    assert not exists(core.read_namespaced_config_map, "bg-child", NS)
    still = custom.get_namespaced_custom_object(G, V, NS, P, "bg-held")
    assert still["metadata"]["deletionTimestamp"]
    assert exists(custom.get_namespaced_custom_object, G, V, NS, P, "bg-two-owners")  # one owner remains


def test_foreground_deletion_waits_for_blocking_dependents(custom):
    owner = custom.create_namespaced_custom_object(G, V, NS, P, gadget("fg-owner"))
    child = gadget("fg-child")
    child["metadata"].update(ownerReferences=[owner_ref(owner)], finalizers=["example.com/hold"])
    custom.create_namespaced_custom_object(G, V, NS, P, child)
    deleting = custom.delete_namespaced_custom_object(G, V, NS, P, "fg-owner", propagation_policy="Foreground")
    assert "foregroundDeletion" in deleting["metadata"]["finalizers"] and deleting["metadata"]["deletionTimestamp"]
    assert custom.get_namespaced_custom_object(G, V, NS, P, "fg-child")["metadata"]["deletionTimestamp"]
    assert exists(custom.get_namespaced_custom_object, G, V, NS, P, "fg-owner")
    custom.patch_namespaced_custom_object(G, V, NS, P, "fg-child", {"metadata": {"finalizers": None}})
    assert not exists(custom.get_namespaced_custom_object, G, V, NS, P, "fg-child")
    assert not exists(custom.get_namespaced_custom_object, G, V, NS, P, "fg-owner")


def test_orphan_keeps_dependents_and_strips_the_owner_reference(custom, core):
    owner = custom.create_namespaced_custom_object(G, V, NS, P, gadget("or-owner"))
    core.create_namespaced_config_map(NS, {"metadata": {"name": "or-child", "ownerReferences": [owner_ref(owner)]}})
    custom.delete_namespaced_custom_object(G, V, NS, P, "or-owner", propagation_policy="Orphan")
    assert core.read_namespaced_config_map("or-child", NS).metadata.owner_references is None


def test_namespace_deletion_removes_its_objects_and_waits_for_finalizers(core, custom):
    core.create_namespace({"metadata": {"name": "doomed"}})
    core.create_namespaced_config_map("doomed", {"metadata": {"name": "c"}})
    held = gadget("held")
    held["metadata"]["finalizers"] = ["example.com/hold"]
    custom.create_namespaced_custom_object(G, V, "doomed", P, held)
    core.delete_namespace("doomed")
    ns = core.read_namespace("doomed")
    assert ns.status.phase == "Terminating" and ns.metadata.deletion_timestamp
    assert not exists(core.read_namespaced_config_map, "c", "doomed")
    with pytest.raises(ApiException) as info:
        core.create_namespaced_config_map("doomed", {"metadata": {"name": "late"}})
    assert info.value.status == 403 and status_of(info.value)["reason"] == "Forbidden"
    custom.patch_namespaced_custom_object(G, V, "doomed", P, "held", {"metadata": {"finalizers": None}})
    assert not exists(core.read_namespace, "doomed")


def test_delete_answers_object_or_status_like_the_real_stores(server, core, custom):
    custom.create_namespaced_custom_object(G, V, NS, P, gadget("del-cr"))
    assert custom.delete_namespaced_custom_object(G, V, NS, P, "del-cr")["kind"] == "Gadget"
    core.create_namespaced_config_map(NS, {"metadata": {"name": "del-cm"}})
    body = raw(server, "DELETE", f"/api/v1/namespaces/{NS}/configmaps/del-cm").json()
    assert body["kind"] == "Status" and body["status"] == "Success" and body["details"]["name"] == "del-cm"
    missing = raw(server, "DELETE", f"/api/v1/namespaces/{NS}/configmaps/del-cm")
    assert missing.status_code == 404 and missing.json()["message"] == 'configmaps "del-cm" not found'


def test_delete_precondition_and_bad_policy(server, custom):
    custom.create_namespaced_custom_object(G, V, NS, P, gadget("del-pre"))
    path = f"/apis/{G}/{V}/namespaces/{NS}/{P}/del-pre"
    stale = raw(server, "DELETE", path, {"preconditions": {"resourceVersion": "1"}})
    assert stale.status_code == 409 and stale.json()["reason"] == "Conflict"
    bad = raw(server, "DELETE", path, {"propagationPolicy": "Sideways"})
    assert bad.status_code == 422


def test_delete_collection_with_selector(server, custom):
    for name in ("dc-a", "dc-b", "dc-keep"):
        body = gadget(name)
        body["metadata"]["labels"] = {"batch": "keep" if name == "dc-keep" else "drop"}
        custom.create_namespaced_custom_object(G, V, NS, P, body)
    custom.delete_collection_namespaced_custom_object(G, V, NS, P, label_selector="batch=drop")
    left = custom.list_namespaced_custom_object(G, V, NS, P, label_selector="batch")["items"]
    assert [i["metadata"]["name"] for i in left] == ["dc-keep"]
