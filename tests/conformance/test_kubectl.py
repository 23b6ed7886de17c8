"""What kubectl users do: apply twice, get with printer columns and categories, explain, describe with events,
wait for a condition, delete, server-side apply, discovery."""

import json

import yaml

from tests.conformance.conftest import finetune


def test_discovery_has_short_names_and_categories(kubectl):
    resources = kubectl("api-resources", "--api-group=kubeforge.dev", "-o", "wide").stdout
    for short in ("tj", "ft", "vi", "se", "er"):
        assert f" {short} " in resources
    assert "genai" in resources


def test_apply_twice_then_get_with_columns_and_categories(kubectl):
    manifest = yaml.safe_dump(finetune("k-apply"))
    assert "created" in kubectl("apply", "-f", "-", input=manifest).stdout
    assert "unchanged" in kubectl("apply", "-f", "-", input=manifest).stdout
    changed = yaml.safe_dump(finetune("k-apply", failurePolicy={"maxRestarts": 5}))  # a field that may change
    assert "configured" in kubectl("apply", "-f", "-", input=changed).stdout
    table = kubectl("get", "ft", "k-apply").stdout
    assert table.split()[:6] == ["NAME", "PHASE", "PROGRESS", "RESTARTS", "AGE", "k-apply"]
    assert "k-apply" in kubectl("get", "genai").stdout
    assert "k-apply" in kubectl("get", "ft,tj,vi,se,er").stdout
    wide = kubectl("get", "ft", "k-apply", "-o", "wide").stdout
    assert "READY" in wide and "MODEL" in wide


def test_apply_refuses_schema_violations(kubectl):
    body = finetune("k-bad")
    body["spec"]["method"] = "dora"
    result = kubectl("apply", "-f", "-", input=yaml.safe_dump(body), check=False)
    assert result.returncode != 0 and 'Unsupported value: "dora"' in result.stderr


def test_explain_uses_crd_descriptions(kubectl):
    text = kubectl("explain", "finetune.spec.failurePolicy").stdout
    assert "maxRestarts" in text and "hangTimeout" in text and "Failure detection and retry" in text


def test_describe_shows_events(kubectl, core):
    kubectl("apply", "-f", "-", input=yaml.safe_dump(finetune("k-describe")))
    obj = json.loads(kubectl("get", "ft", "k-describe", "-o", "json").stdout)
    core.create_namespaced_event("default", {
        "metadata": {"generateName": "k-describe."},
        "involvedObject": {"apiVersion": "kubeforge.dev/v1alpha1", "kind": "FineTune", "name": "k-describe",
                           "namespace": "default", "uid": obj["metadata"]["uid"]},
        "reason": "AttemptStarted", "message": "attempt 1 started", "type": "Normal",
        "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z", "count": 1,
        "source": {"component": "kubeforge"}})
    described = kubectl("describe", "finetune", "k-describe").stdout
    assert "Events:" in described and "AttemptStarted" in described and "attempt 1 started" in described


def test_wait_for_condition_and_delete(kubectl, custom):
    kubectl("apply", "-f", "-", input=yaml.safe_dump(finetune("k-wait")))
    custom.patch_namespaced_custom_object_status("kubeforge.dev", "v1alpha1", "default", "finetunes", "k-wait", {
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded", "message": "",
                                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    assert "condition met" in kubectl("wait", "--for=condition=Ready", "ft/k-wait", "--timeout=10s").stdout
    assert "deleted" in kubectl("delete", "ft", "k-wait").stdout
    assert kubectl("get", "ft", "k-wait", check=False).returncode != 0


def test_server_side_apply(kubectl):
    manifest = yaml.safe_dump(finetune("k-ssa"))
    assert "serverside-applied" in kubectl("apply", "--server-side", "-f", "-", input=manifest).stdout
    obj = json.loads(kubectl("get", "ft", "k-ssa", "-o", "json", "--show-managed-fields").stdout)
    assert obj["metadata"]["managedFields"][0]["manager"] == "kubectl"
