"""Custom resources against their CRD's structural schema: OpenAPI validation with kube-apiserver's messages,
defaulting, pruning, x-kubernetes-* extensions, CEL rules (incl. transition rules and messageExpression) and
the status subresource's schema."""

import pytest
from kubernetes.client.exceptions import ApiException

from tests.conformance.conftest import gadget, status_of

G, V, NS, P = "conformance.kubeforge.dev", "v1", "default", "gadgets"
NOT_CHECKED = ('<nil>: Invalid value: "null": some validation rules were not checked because the object was invalid; '
               'correct the existing errors to complete validation')


def rejected(custom, body) -> dict:
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(G, V, NS, P, body)
    assert info.value.status == 422
    status = status_of(info.value)
    assert status["kind"] == "Status" and status["reason"] == "Invalid" and status["code"] == 422
    assert status["details"]["kind"] == "Gadget" and status["details"]["group"] == G
    return status


@pytest.mark.parametrize("spec, message", [
    ({"color": "pink"}, 'spec.color: Unsupported value: "pink": supported values: "red", "green", "blue"'),
    ({"size": 0}, "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"),
    ({"size": 11}, "spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10"),
    ({"replicas": 0}, "spec.replicas: Invalid value: 0: spec.replicas in body should be greater than 0"),
    ({"ratio": 1}, "spec.ratio: Invalid value: 1: spec.ratio in body should be less than 1"),
    ({"size": "big"}, 'spec.size: Invalid value: "string": spec.size in body must be of type integer: "string"'),
    ({"name": "a"}, 'spec.name: Invalid value: "a": spec.name in body should be at least 2 chars long'),
    ({"name": "abcdefghij"}, "spec.name: Too long: may not be more than 8 bytes"),
    ({"name": "ABC"}, "spec.name: Invalid value: \"ABC\": spec.name in body should match '^[a-z]+$'"),
    ({"tags": []}, "spec.tags: Invalid value: 0: spec.tags in body should have at least 1 items"),
    ({"tags": ["a", "b", "c", "d"]}, "spec.tags: Too many: 4: must have at most 3 items"),
    ({"labels": {"a": 1}}, 'spec.labels.a: Invalid value: "integer": spec.labels.a in body must be of type string: "integer"'),
    ({"port": True}, 'spec.port: Invalid value: "boolean": spec.port in body must be of type integer or string: "boolean"'),
    ({"replicas": 3, "maxReplicas": 2}, 'spec: Invalid value: "object": maxReplicas must be at least 3'),
])
def test_schema_violations_have_the_real_servers_messages(custom, spec, message):
    body = gadget("bad", **spec)
    status = rejected(custom, body)
    if any(blocking in message for blocking in ("Unsupported value", "must be of type", "Too long", "Too many")):
        message = f"[{message}, {NOT_CHECKED}]"  # these errors skip the CEL rules, and the server says so
    assert status["message"] == f'Gadget.{G} "bad" is invalid: {message}'
    assert status["details"]["causes"][0]["field"] == message.lstrip("[").split(":")[0]


def test_required_fields_and_several_errors_at_once(custom):
    body = gadget("req")
    del body["spec"]["color"]
    body["spec"]["size"] = 0
    status = rejected(custom, body)
    assert status["message"].startswith(f'Gadget.{G} "req" is invalid: [')
    reasons = {c["field"]: c["reason"] for c in status["details"]["causes"]}
    assert reasons == {"spec.color": "FieldValueRequired", "spec.size": "FieldValueInvalid", "<nil>": "FieldValueInvalid"}
    assert "spec.color: Required value" in status["message"]


def test_nullable_int_or_string_preserve_unknown_and_embedded(custom):
    body = gadget("shapes", port="http", note=None, extra={"anything": {"goes": [1, 2]}},
                  template={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}})
    created = custom.create_namespaced_custom_object(G, V, NS, P, body)
    assert created["spec"]["port"] == "http" and created["spec"]["note"] is None
    assert created["spec"]["extra"] == {"anything": {"goes": [1, 2]}}
    assert created["spec"]["template"]["metadata"] == {"name": "x"} and created["spec"]["template"]["data"] == {"a": "b"}
    assert custom.create_namespaced_custom_object(G, V, NS, P, gadget("port-int", port=8080))["spec"]["port"] == 8080


def test_defaults_are_applied_and_unknown_fields_pruned(custom):
    body = gadget("defaults", surprise={"x": 1})
    body["topLevelSurprise"] = True
    created = custom.create_namespaced_custom_object(G, V, NS, P, body)
    assert created["spec"]["size"] == 3 and created["spec"]["replicas"] == 1
    assert "surprise" not in created["spec"] and "topLevelSurprise" not in created


def test_transition_rules_see_the_old_object(custom):
    custom.create_namespaced_custom_object(G, V, NS, P, gadget("locked", size=2, locked=True))
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object(G, V, NS, P, "locked", {"spec": {"size": 5}})
    assert info.value.status == 422
    assert status_of(info.value)["message"] == \
        f'Gadget.{G} "locked" is invalid: spec.size: Invalid value: "object": size is immutable while locked'
    custom.patch_namespaced_custom_object(G, V, NS, P, "locked", {"spec": {"locked": False}})
    assert custom.patch_namespaced_custom_object(G, V, NS, P, "locked", {"spec": {"size": 5}})["spec"]["size"] == 5


def test_status_subresource_is_validated_against_the_status_schema(custom):
    custom.create_namespaced_custom_object(G, V, NS, P, gadget("stat"))
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object_status(G, V, NS, P, "stat", {"status": {"phase": "Exploded"}})
    assert info.value.status == 422
    assert 'status.phase: Unsupported value: "Exploded"' in status_of(info.value)["message"]
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object_status(G, V, NS, P, "stat", {"status": {"conditions": [{"type": "Ready"}]}})
    assert "status.conditions[0].status: Required value" in status_of(info.value)["message"]
    ok = custom.patch_namespaced_custom_object_status(G, V, NS, P, "stat", {"status": {"phase": "Running"}})
    assert ok["status"]["phase"] == "Running"


def test_unsupported_cel_expression_never_rejects(api_client, custom):
    ext = __import__("kubernetes").client.ApiextensionsV1Api(api_client)
    ext.create_custom_resource_definition({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "oddities.conformance.kubeforge.dev"},
        "spec": {"group": G, "scope": "Namespaced",
                 "names": {"plural": "oddities", "singular": "oddity", "kind": "Oddity"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "properties": {"spec": {
                         "type": "object", "x-kubernetes-validations": [
                             {"rule": "self.name.someFunctionCelPythonLacks()", "message": "never"}],
                         "properties": {"name": {"type": "string"}}}}}}}]}})
    created = custom.create_namespaced_custom_object(G, V, NS, "oddities", {
        "apiVersion": f"{G}/v1", "kind": "Oddity", "metadata": {"name": "o"}, "spec": {"name": "x"}})
    assert created["spec"] == {"name": "x"}
