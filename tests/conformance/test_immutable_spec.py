"""Through the emulator, as on a real kube-apiserver: a FineTune's spec cannot change after creation except
failurePolicy and deletionPolicy (the CRD's CEL transition rule, generated from kubeforge.api)."""

import pytest
from kubernetes.client.exceptions import ApiException

from tests.conformance.conftest import finetune, status_of

G, V, NS, P = "kubeforge.dev", "v1alpha1", "default", "finetunes"
MESSAGE = ("spec is immutable once created, except failurePolicy and deletionPolicy: "
           "delete and re-create the FineTune to change it")


def test_changing_the_training_of_a_created_finetune_is_refused(custom):
    custom.create_namespaced_custom_object(G, V, NS, P, finetune("frozen", training={"epochs": 1}))
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object(G, V, NS, P, "frozen", {"spec": {"training": {"epochs": 3}}})
    assert info.value.status == 422
    status = status_of(info.value)
    assert status["reason"] == "Invalid"
    assert status["message"] == f'FineTune.{G} "frozen" is invalid: spec: Invalid value: "object": {MESSAGE}'
    assert custom.get_namespaced_custom_object(G, V, NS, P, "frozen")["spec"]["training"]["epochs"] == 1


def test_failure_policy_and_deletion_policy_of_a_created_finetune_may_change(custom):
    custom.create_namespaced_custom_object(G, V, NS, P, finetune("tunable"))
    patched = custom.patch_namespaced_custom_object(
        G, V, NS, P, "tunable", {"spec": {"failurePolicy": {"maxRestarts": 7}, "deletionPolicy": "Delete"}})
    assert patched["spec"]["failurePolicy"]["maxRestarts"] == 7 and patched["spec"]["deletionPolicy"] == "Delete"
    assert patched["metadata"]["generation"] == 2


def test_a_created_trainingjob_may_change_its_resources_only_within_its_batch_rules(custom):
    import copy

    import yaml

    from tests.conftest import REPO_ROOT

    example = yaml.safe_load((REPO_ROOT / "examples" / "trainingjob.yaml").read_text())
    body = {**copy.deepcopy(example), "metadata": {"name": "shrinkable"}}
    custom.create_namespaced_custom_object(G, V, NS, "trainingjobs", body)
    workers = body["spec"]["resources"]["workers"]
    patched = custom.patch_namespaced_custom_object(G, V, NS, "trainingjobs", "shrinkable",
                                                    {"spec": {"resources": {"workers": workers - 1}}})
    assert patched["spec"]["resources"]["workers"] == workers - 1 and patched["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object(G, V, NS, "trainingjobs", "shrinkable",
                                              {"spec": {"training": {"maxSteps": 999}}})
    assert "except failurePolicy, deletionPolicy and resources" in status_of(info.value)["message"]
    with pytest.raises(ApiException) as info:  # the example's 4 sequences per step cannot be split over 3 workers
        custom.patch_namespaced_custom_object(G, V, NS, "trainingjobs", "shrinkable",
                                              {"spec": {"resources": {"workers": 3}}})
    assert "divisible by resources.workers" in status_of(info.value)["message"]
