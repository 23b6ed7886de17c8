"""Discovery, OpenAPI, health endpoints, built-in types and CRD registration through the API."""

import json

import pytest
from kubernetes.client.exceptions import ApiException

from tests.conformance.conftest import gadget, raw, status_of

AGGREGATED = ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
              "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json")


@pytest.mark.parametrize("path", ["/healthz", "/livez", "/readyz"])
def test_health_endpoints(server, path):
    response = raw(server, "GET", path, accept="*/*")
    assert response.status_code == 200 and response.text == "ok"


def test_version_api_and_groups(server):
    version = raw(server, "GET", "/version").json()
    assert version["major"] == "1" and version["gitVersion"].startswith("v1.")
    assert raw(server, "GET", "/api").json()["versions"] == ["v1"]
    groups = {g["name"]: g for g in raw(server, "GET", "/apis").json()["groups"]}
    for name in ("kubeforge.dev", "ray.io", "apiextensions.k8s.io", "coordination.k8s.io", "events.k8s.io"):
        assert groups[name]["preferredVersion"]["groupVersion"].startswith(name + "/")


def test_legacy_discovery_even_when_aggregated_is_asked_for(server):
    """The emulator serves no aggregated discovery: it answers the legacy documents, as application/json,
    which clients accept as 'not aggregated' and fall back on."""
    response = raw(server, "GET", "/apis", accept=AGGREGATED)
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["kind"] == "APIGroupList"


def test_resource_lists_carry_names_verbs_and_categories(server):
    listed = raw(server, "GET", "/apis/kubeforge.dev/v1alpha1").json()
    assert listed["kind"] == "APIResourceList" and listed["groupVersion"] == "kubeforge.dev/v1alpha1"
    by_name = {r["name"]: r for r in listed["resources"]}
    ft = by_name["finetunes"]
    assert ft["singularName"] == "finetune" and ft["kind"] == "FineTune" and ft["namespaced"] is True
    assert "ft" in ft["shortNames"] and "genai" in ft["categories"]
    assert {"create", "get", "list", "watch", "patch", "update", "delete", "deletecollection"} <= set(ft["verbs"])
    assert by_name["finetunes/status"]["verbs"] == ["get", "patch", "update"]
    core = {r["name"]: r for r in raw(server, "GET", "/api/v1").json()["resources"]}
    assert core["namespaces"]["namespaced"] is False and "ns" in core["namespaces"]["shortNames"]
    assert {"configmaps", "secrets", "events", "serviceaccounts", "services", "pods"} <= set(core)
    assert raw(server, "GET", "/apis/nope.example.com/v1").status_code == 404


def test_openapi_v2_and_v3_carry_crd_schemas_with_descriptions(server):
    v2 = raw(server, "GET", "/openapi/v2").json()
    gadget_schema = v2["definitions"]["dev.kubeforge.conformance.v1.Gadget"]
    assert gadget_schema["properties"]["spec"]["properties"]["color"]["description"] == "The colour."
    assert gadget_schema["x-kubernetes-group-version-kind"] == [
        {"group": "conformance.kubeforge.dev", "kind": "Gadget", "version": "v1"}]
    index = raw(server, "GET", "/openapi/v3").json()["paths"]
    url = index["apis/conformance.kubeforge.dev/v1"]["serverRelativeURL"]
    v3 = raw(server, "GET", url).json()
    assert v3["components"]["schemas"]["dev.kubeforge.conformance.v1.Gadget"]["description"] == "A Gadget is a test object."
    assert "api/v1" in index


def test_precreated_namespaces_and_missing_namespace(core, custom):
    names = {ns.metadata.name for ns in core.list_namespace().items}
    assert {"default", "kube-system", "kube-public"} <= names
    with pytest.raises(ApiException) as info:
        core.create_namespaced_config_map("ghost", {"metadata": {"name": "c"}})
    status = status_of(info.value)
    assert info.value.status == 404 and status["message"] == 'namespaces "ghost" not found'
    assert status["details"] == {"name": "ghost", "kind": "namespaces", "group": ""}


def test_builtins_crud_and_list_kinds(server, core, api_client):
    from kubernetes import client

    core.create_namespaced_service_account("default", {"metadata": {"name": "sa1"}})
    core.create_namespaced_service("default", {"metadata": {"name": "svc1"}, "spec": {"ports": [{"port": 80}]}})
    core.create_namespaced_pod("default", {"metadata": {"name": "p1"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})
    lease = client.CoordinationV1Api(api_client).create_namespaced_lease(
        "default", {"metadata": {"name": "l1"}, "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15}})
    assert lease.spec.holder_identity == "me"
    events = client.EventsV1Api(api_client).create_namespaced_event("default", {
        "metadata": {"name": "e1"}, "eventTime": "2026-01-01T00:00:00.000000Z", "reason": "R", "action": "A",
        "reportingController": "x", "reportingInstance": "y", "type": "Normal", "note": "n",
        "regarding": {"kind": "Pod", "name": "p1", "namespace": "default"}})
    assert events.regarding.name == "p1"
    for path, kind in (("/api/v1/namespaces/default/pods", "PodList"), ("/api/v1/configmaps", "ConfigMapList"),
                       ("/apis/coordination.k8s.io/v1/leases", "LeaseList"),
                       ("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinitionList")):
        listed = raw(server, "GET", path).json()
        assert listed["kind"] == kind and listed["apiVersion"] and listed["metadata"]["resourceVersion"]


def test_crd_created_through_the_api_is_established_and_served_then_removed(api_client, server):
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api_client)
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "sprockets.example.com"},
           "spec": {"group": "example.com", "scope": "Cluster",
                    "names": {"plural": "sprockets", "singular": "sprocket", "kind": "Sprocket",
                              "shortNames": ["spr"], "categories": ["parts"]},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                        "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    created = ext.create_custom_resource_definition(crd)
    conditions = {c.type: (c.status, c.reason) for c in created.status.conditions}
    assert conditions["Established"][0] == "True" and conditions["NamesAccepted"] == ("True", "NoConflicts")
    assert created.status.accepted_names.kind == "Sprocket"
    resources = {r["name"]: r for r in raw(server, "GET", "/apis/example.com/v1").json()["resources"]}
    assert resources["sprockets"]["namespaced"] is False and resources["sprockets"]["shortNames"] == ["spr"]
    made = raw(server, "POST", "/apis/example.com/v1/sprockets",
               {"apiVersion": "example.com/v1", "kind": "Sprocket", "metadata": {"name": "s"}, "anything": 1})
    assert made.status_code == 201 and made.json()["anything"] == 1
    ext.delete_custom_resource_definition("sprockets.example.com")
    assert raw(server, "GET", "/apis/example.com/v1/sprockets").status_code == 404
    assert "example.com" not in json.dumps(raw(server, "GET", "/apis").json())


def test_server_side_table_with_printer_columns(server, custom):
    obj = gadget("tabled", tags=["first", "second"])
    custom.create_namespaced_custom_object("conformance.kubeforge.dev", "v1", "default", "gadgets", obj)
    custom.patch_namespaced_custom_object_status("conformance.kubeforge.dev", "v1", "default", "gadgets", "tabled", {
        "status": {"conditions": [{"type": "Other", "status": "False"}, {"type": "Ready", "status": "True"}]}})
    table = raw(server, "GET", "/apis/conformance.kubeforge.dev/v1/namespaces/default/gadgets/tabled",
                accept="application/json;as=Table;v=v1;g=meta.k8s.io,application/json").json()
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    columns = [(c["name"], c["priority"]) for c in table["columnDefinitions"]]
    assert columns == [("Name", 0), ("Color", 0), ("Ready", 0), ("First", 1), ("Team", 1), ("Last", 1), ("Tags", 1),
                       ("Size", 1), ("Locked", 1), ("Failing", 1), ("Age", 0)]
    cells = table["rows"][0]["cells"]
    assert cells[:4] == ["tabled", "red", "True", "first"] and cells[-1].endswith("s")
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
