"""kubeforge.launch.merge: strategic merge of pod templates and RayCluster specs, with Kubernetes' own strategies."""

from __future__ import annotations

import importlib.resources
import json

import pytest

from kubeforge.launch.merge import POD_TEMPLATE_SPEC, RAY_CLUSTER_SPEC, strategic_merge


def test_the_pod_template_strategies_are_kubernetes_published_ones():
    """x-kubernetes-patch-strategy / -merge-key of PodTemplateSpec in the OpenAPI kubernetes-validate ships."""
    from kubeforge.dev.apiserver.strategies import KUBERNETES_VERSION, derive  # tests may use the dev tools

    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"{KUBERNETES_VERSION}-local"
    definitions = json.loads((root / "_definitions.json").read_text())["$defs"]
    name = "io.k8s.api.core.v1.PodTemplateSpec"
    assert POD_TEMPLATE_SPEC == derive(definitions, name, (name,))


POD = {"spec": {
    "containers": [{"name": "ray-head", "image": "a", "env": [{"name": "A", "value": "1"}],
                    "ports": [{"containerPort": 6379, "name": "gcs"}], "args": ["x", "y"]}],
    "tolerations": [{"key": "t1", "operator": "Exists"}],
    "nodeSelector": {"pool": "gpu", "zone": "a"},
    "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory"}}],
}}


def test_containers_merge_by_name_and_keep_what_the_patch_does_not_mention():
    merged = strategic_merge(POD, {"spec": {"containers": [
        {"name": "ray-head", "env": [{"name": "B", "value": "2"}, {"name": "A", "value": "3"}],
         "securityContext": {"runAsNonRoot": True}},
        {"name": "sidecar", "image": "s"}]}}, POD_TEMPLATE_SPEC)
    head, sidecar = merged["spec"]["containers"]
    assert head["image"] == "a" and head["ports"] == [{"containerPort": 6379, "name": "gcs"}]
    assert head["env"] == [{"name": "A", "value": "3"}, {"name": "B", "value": "2"}]
    assert head["securityContext"] == {"runAsNonRoot": True}
    assert sidecar == {"name": "sidecar", "image": "s"}
    assert POD["spec"]["containers"][0]["env"] == [{"name": "A", "value": "1"}]  # inputs untouched


def test_lists_without_a_merge_key_are_replaced_as_kubernetes_does():
    merged = strategic_merge(POD, {"spec": {"tolerations": [{"key": "t2", "operator": "Exists"}],
                                            "containers": [{"name": "ray-head", "args": ["z"]}]}}, POD_TEMPLATE_SPEC)
    assert merged["spec"]["tolerations"] == [{"key": "t2", "operator": "Exists"}]
    assert merged["spec"]["containers"][0]["args"] == ["z"]


def test_volumes_and_image_pull_secrets_merge_by_name():
    merged = strategic_merge({"spec": {**POD["spec"], "imagePullSecrets": [{"name": "platform"}]}}, {"spec": {
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "d"}}],
        "imagePullSecrets": [{"name": "team"}]}}, POD_TEMPLATE_SPEC)
    assert [v["name"] for v in merged["spec"]["volumes"]] == ["shm", "data"]
    assert merged["spec"]["imagePullSecrets"] == [{"name": "platform"}, {"name": "team"}]


def test_directives_null_delete_and_replace():
    merged = strategic_merge(POD, {"spec": {
        "nodeSelector": {"pool": None},
        "volumes": [{"$patch": "delete", "name": "shm"}],
        "containers": [{"name": "ray-head", "env": [{"$patch": "replace"}, {"name": "C", "value": "c"}]}],
    }}, POD_TEMPLATE_SPEC)
    assert merged["spec"]["nodeSelector"] == {"zone": "a"}
    assert merged["spec"]["volumes"] == []
    assert merged["spec"]["containers"][0]["env"] == [{"name": "C", "value": "c"}]
    replaced = strategic_merge(POD, {"spec": {"nodeSelector": {"$patch": "replace", "pool": "cpu"}}},
                               POD_TEMPLATE_SPEC)
    assert replaced["spec"]["nodeSelector"] == {"pool": "cpu"}


def test_new_values_carry_no_directives():
    merged = strategic_merge({}, {"spec": {"containers": [{"name": "x", "env": [{"$patch": "delete", "name": "A"}],
                                                           "resources": {"limits": None}}]}}, POD_TEMPLATE_SPEC)
    assert merged == {"spec": {"containers": [{"name": "x", "env": [], "resources": {}}]}}


def test_worker_groups_merge_by_group_name_with_their_pod_templates():
    cluster = {"headGroupSpec": {"template": POD},
               "workerGroupSpecs": [{"groupName": "workers", "replicas": 2, "template": POD}]}
    merged = strategic_merge(cluster, {
        "headGroupSpec": {"template": {"spec": {"containers": [{"name": "ray-head", "image": "b"}]}}},
        "workerGroupSpecs": [{"groupName": "workers", "template": {"spec": {
            "containers": [{"name": "ray-head", "env": [{"name": "W", "value": "w"}]}]}}},
            {"groupName": "big", "replicas": 1}]}, RAY_CLUSTER_SPEC)
    assert merged["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == "b"
    workers, big = merged["workerGroupSpecs"]
    assert workers["replicas"] == 2
    assert [e["name"] for e in workers["template"]["spec"]["containers"][0]["env"]] == ["A", "W"]
    assert workers["template"]["spec"]["tolerations"] == POD["spec"]["tolerations"]
    assert big == {"groupName": "big", "replicas": 1}


def test_an_item_without_its_merge_key_is_refused_with_the_key_named():
    cluster = {"workerGroupSpecs": [{"groupName": "workers", "template": POD}]}
    with pytest.raises(ValueError) as error:
        strategic_merge(cluster, {"workerGroupSpecs": [{"groupName": "workers", "template": {"spec": {
            "containers": [{"name": "ray-head"}, {"image": "x"}]}}}]}, RAY_CLUSTER_SPEC, "spec.ray.rayClusterSpec")
    assert str(error.value) == ("spec.ray.rayClusterSpec.workerGroupSpecs[0].template.spec.containers[1] has no "
                                "'name': items of containers are merged with the defaults by 'name', so give each "
                                "one its 'name'")
