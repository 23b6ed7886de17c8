"""CEL transition rules (x-kubernetes-validations using oldSelf) as kube-apiserver evaluates them: only on
update and only where the old value exists (correlated by key; list-map items by their keys), except with
optionalOldSelf, where oldSelf is an optional also on create; message, messageExpression, fieldPath and reason
honoured; 422 Invalid worded as the real server words it."""

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.conformance.conftest import status_of

G, V, NS, P = "conformance.kubeforge.dev", "v1", "default", "oneshots"


def oneshot(name: str, **spec) -> dict:
    return {"apiVersion": f"{G}/{V}", "kind": "Oneshot", "metadata": {"name": name}, "spec": spec}


def refusal(call, *args) -> str:
    """The errors of a 422 Invalid, after 'Oneshot.<group> "<name>" is invalid: '."""
    with pytest.raises(ApiException) as info:
        call(*args)
    assert info.value.status == 422, info.value.body
    status = status_of(info.value)
    assert status["reason"] == "Invalid" and status["details"]["kind"] == "Oneshot"
    return status["message"].split(" is invalid: ", 1)[1]


def test_transition_rules_never_run_on_create(custom):
    created = custom.create_namespaced_custom_object(G, V, NS, P, oneshot(
        "t-create", frozen={"uri": "s3://a"}, model="m1", steps=[{"name": "a", "command": "x"}], tags=["t"]))
    assert created["spec"]["model"] == "m1"


def test_a_changed_immutable_field_is_refused_with_the_rules_message(custom):
    custom.create_namespaced_custom_object(G, V, NS, P, oneshot("t-frozen", frozen={"uri": "s3://a", "epochs": 1}))
    message = refusal(custom.patch_namespaced_custom_object, G, V, NS, P, "t-frozen", {"spec": {"frozen": {"epochs": 2}}})
    assert message == 'spec.frozen: Invalid value: "object": frozen is immutable'
    same = custom.patch_namespaced_custom_object(G, V, NS, P, "t-frozen", {"spec": {"frozen": {"epochs": 1},
                                                                                   "note": "may change"}})
    assert same["spec"]["note"] == "may change"


def test_message_expression_and_the_schema_type_as_the_value(custom):
    custom.create_namespaced_custom_object(G, V, NS, P, oneshot("t-model", model="m1"))
    message = refusal(custom.patch_namespaced_custom_object, G, V, NS, P, "t-model", {"spec": {"model": "m2"}})
    assert message == 'spec.model: Invalid value: "string": model is immutable: it was m1'


def test_a_value_without_an_old_value_skips_the_rule(custom):
    custom.create_namespaced_custom_object(G, V, NS, P, oneshot("t-late"))
    added = custom.patch_namespaced_custom_object(G, V, NS, P, "t-late", {"spec": {"model": "m1", "frozen": {}}})
    assert added["spec"]["model"] == "m1"


def test_a_blank_message_expression_falls_back_to_the_message_and_no_message_to_the_rule(custom):
    message = refusal(custom.create_namespaced_custom_object, G, V, NS, P, oneshot("t-note", note="x" * 11))
    assert message == ('[spec.note: Invalid value: "string": note is too long, '
                       """spec.note: Invalid value: "string": failed rule: !self.startsWith('x')]""")


def test_a_root_rule_reports_the_nil_field_path(custom):
    custom.create_namespaced_custom_object(G, V, NS, P, oneshot("t-root", note="n"))
    message = refusal(custom.patch_namespaced_custom_object, G, V, NS, P, "t-root", {"spec": None})
    assert message == '<nil>: Invalid value: "object": spec cannot be removed'


def test_field_path_and_reason(custom):
    custom.create_namespaced_custom_object(G, V, NS, P, oneshot("t-owner", owner="team-a"))
    message = refusal(custom.patch_namespaced_custom_object, G, V, NS, P, "t-owner", {"spec": {"owner": None}})
    assert message == "spec.owner: Forbidden: owner cannot be removed"
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object(G, V, NS, P, "t-owner", {"spec": {"owner": None}})
    assert status_of(info.value)["details"]["causes"] == [
        {"reason": "FieldValueForbidden", "message": "Forbidden: owner cannot be removed", "field": "spec.owner"}]


def test_optional_old_self_runs_on_create_and_update(custom):
    message = refusal(custom.create_namespaced_custom_object, G, V, NS, P, oneshot("t-budget", budget=200))
    assert message == 'spec.budget: Invalid value: "integer": a new budget is at most 100'
    custom.create_namespaced_custom_object(G, V, NS, P, oneshot("t-budget", budget=50))
    assert custom.patch_namespaced_custom_object(G, V, NS, P, "t-budget", {"spec": {"budget": 200}})["spec"]["budget"] == 200
    message = refusal(custom.patch_namespaced_custom_object, G, V, NS, P, "t-budget", {"spec": {"budget": 10}})
    assert message == 'spec.budget: Invalid value: "integer": budget may only grow'
    custom.create_namespaced_custom_object(G, V, NS, P, oneshot("t-budget-late"))
    # An update that adds the field has no old value either: oldSelf is empty, the rule still runs.
    message = refusal(custom.patch_namespaced_custom_object, G, V, NS, P, "t-budget-late", {"spec": {"budget": 500}})
    assert message == 'spec.budget: Invalid value: "integer": a new budget is at most 100'


def test_list_map_items_correlate_by_key_and_atomic_list_items_never(custom):
    custom.create_namespaced_custom_object(G, V, NS, P, oneshot(
        "t-steps", steps=[{"name": "a", "command": "x"}], tags=["one"]))
    grown = custom.patch_namespaced_custom_object(G, V, NS, P, "t-steps", {"spec": {
        "steps": [{"name": "b", "command": "y"}, {"name": "a", "command": "x"}], "tags": ["two"]}})
    assert [s["name"] for s in grown["spec"]["steps"]] == ["b", "a"]
    message = refusal(custom.patch_namespaced_custom_object, G, V, NS, P, "t-steps", {"spec": {
        "steps": [{"name": "b", "command": "y"}, {"name": "a", "command": "changed"}]}})
    assert message == "spec.steps[1]: Invalid value: \"object\": a step's command is immutable"


def test_status_updates_and_metadata_patches_pass_spec_transition_rules(custom):
    custom.create_namespaced_custom_object(G, V, NS, P, oneshot("t-status", model="m1", frozen={"uri": "a"}))
    custom.patch_namespaced_custom_object_status(G, V, NS, P, "t-status", {"status": {"phase": "Running"}})
    labelled = custom.patch_namespaced_custom_object(G, V, NS, P, "t-status", {"metadata": {
        "labels": {"a": "b"}, "finalizers": ["example.com/f"]}})
    assert labelled["metadata"]["labels"] == {"a": "b"}
    custom.patch_namespaced_custom_object(G, V, NS, P, "t-status", {"metadata": {"finalizers": None}})


def test_kubectl_apply_shows_the_refusal(kubectl):
    manifest = oneshot("t-kubectl", model="m1")
    kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    manifest["spec"]["model"] = "m2"
    result = kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest), check=False)
    assert result.returncode != 0
    assert ('The Oneshot "t-kubectl" is invalid: spec.model: Invalid value: "string": model is immutable: it was m1'
            in result.stderr)
