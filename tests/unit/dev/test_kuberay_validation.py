"""The local KubeRay refuses what real KubeRay refuses (validation.go wording), and keeps a RayJob whose pods would
not be scheduled Initializing (scheduling.py)."""

import pytest

from kubeforge.dev.kuberay.scheduling import Node, parse_quantity, unschedulable_message
from kubeforge.dev.kuberay.validation import validate_rayjob, validate_rayservice

HEAD = {"name": "ray-head", "image": "ray"}
WORKERS = {"groupName": "workers", "replicas": 1, "minReplicas": 1, "maxReplicas": 1,
           "template": {"spec": {"containers": [{"name": "w"}]}}}


def rayjob(name="ok", cluster=None, **spec):
    cluster = {"headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [HEAD]}}},
               "workerGroupSpecs": [WORKERS], **(cluster or {})}
    return {"metadata": {"name": name, "namespace": "ns"},
            "spec": {"entrypoint": "python -c 1", "rayClusterSpec": cluster, **spec}}


DNS1035 = ("The RayJob metadata is invalid: RayJob name should be a valid DNS1035 label: [a DNS-1035 label must "
           "consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an "
           "alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is "
           "'[a-z]([-a-z0-9]*[a-z0-9])?')]")


@pytest.mark.parametrize("name,expect", [
    ("a" * 47, None),
    ("a" * 48, ("InvalidRayJobMetadata",
                "The RayJob metadata is invalid: RayJob name should be no more than 47 characters")),
    ("a" * 120, ("InvalidRayJobMetadata",
                 "The RayJob metadata is invalid: RayJob name should be no more than 47 characters")),
    ("7th-run", ("InvalidRayJobMetadata", DNS1035)),
    ("team.docs.assistant", ("InvalidRayJobMetadata", DNS1035)),
    ("Upper", ("InvalidRayJobMetadata", DNS1035)),
    ("ends-", ("InvalidRayJobMetadata", DNS1035)),
    ("docs-assistant-1-a1b2c", None),
])
def test_rayjob_names(name, expect):
    assert validate_rayjob(rayjob(name)) == expect


@pytest.mark.parametrize("spec,cluster,message", [
    ({"suspend": True}, None, "a RayJob with shutdownAfterJobFinishes set to false is not allowed to be suspended"),
    ({"ttlSecondsAfterFinished": 10}, None, "shutdownAfterJobFinishes set to false cannot have TTLSecondsAfterFinished"),
    ({"shutdownAfterJobFinishes": True, "ttlSecondsAfterFinished": -1}, None,
     "TTLSecondsAfterFinished must be a non-negative integer"),
    ({"rayClusterSpec": None}, None, "one of RayClusterSpec or ClusterSelector must be set"),
    ({"rayClusterSpec": None, "clusterSelector": {"ray.io/cluster": "c"}, "backoffLimit": 1}, None,
     "BackoffLimit is incompatible with ClusterSelector mode"),
    ({"rayClusterSpec": None, "clusterSelector": {"other": "c"}}, None,
     "cluster name in ClusterSelector should not be empty"),
    ({"activeDeadlineSeconds": 0}, None, "activeDeadlineSeconds must be a positive integer"),
    ({"preRunningDeadlineSeconds": -5}, None, "preRunningDeadlineSeconds must be a positive integer"),
    ({"backoffLimit": -1}, None, "backoffLimit must be a positive integer"),
    ({"runtimeEnvYAML": "a: [x"}, None, "failed to unmarshal RuntimeEnvYAML"),
    ({"shutdownAfterJobFinishes": True,
      "deletionStrategy": {"onSuccess": {"policy": "DeleteSelf"}, "onFailure": {"policy": "DeleteNone"}}}, None,
     "shutdownAfterJobFinshes is set to 'true' while deletion policy is 'DeleteNone'"),
    ({"deletionStrategy": {}}, None, "DeletionStrategy requires either BOTH onSuccess and onFailure"),
    ({}, {"workerGroupSpecs": [{**WORKERS, "minReplicas": None}]},
     "worker group workers must set both minReplicas and maxReplicas when autoscaling is disabled"),
    ({}, {"workerGroupSpecs": [{**WORKERS, "minReplicas": 3, "maxReplicas": 2}]},
     "worker group workers has minReplicas 3 greater than maxReplicas 2"),
    ({}, {"headGroupSpec": {"template": {"spec": {"containers": []}}}},
     "headGroupSpec should have at least one container"),
])
def test_rayjob_spec_rules(spec, cluster, message):
    refused = validate_rayjob(rayjob(cluster=cluster, **spec))
    assert refused is not None and refused[0] == "InvalidRayJobSpec" and message in refused[1]


def test_rayservice_rules():
    ok = {"metadata": {"name": "svc"}, "spec": {"rayClusterConfig": rayjob()["spec"]["rayClusterSpec"]}}
    assert validate_rayservice(ok) is None
    assert validate_rayservice({**ok, "metadata": {"name": "s" * 48}}) == (
        "InvalidRayServiceMetadata",
        "The RayService metadata is invalid: RayService name should be no more than 47 characters")
    assert validate_rayservice({"metadata": {"name": "svc"}, "spec": {}})[0] == "InvalidRayServiceSpec"


def test_operator_rayjobs_of_the_examples_are_accepted_and_fit_a_node():
    from tests.unit.test_launch import example_objects, rayjob_for

    node = Node({"cpu": 2.0, "memory": 16.0 * 2**30, "pods": 110.0})
    for param in example_objects():
        built = rayjob_for(param.values[0])
        assert validate_rayjob(built) is None, built["metadata"]["name"]
        assert unschedulable_message(built["spec"], node) is None


NODE = Node({"cpu": 2.0, "memory": 8.0 * 2**30, "pods": 110.0}, {"kubernetes.io/os": "linux"})


def pod(limits=None, requests=None, selector=None):
    spec = {"containers": [{"name": "c", "resources": {"limits": limits or {}, "requests": requests or {}}}]}
    if selector:
        spec["nodeSelector"] = selector
    return {"rayClusterSpec": {"headGroupSpec": {"template": {"spec": {"containers": [HEAD]}}},
                               "workerGroupSpecs": [{**WORKERS, "template": {"spec": spec}}]}}


@pytest.mark.parametrize("spec,message", [
    (pod({"cpu": "2", "memory": "8Gi"}), None),
    (pod({"cpu": "2500m"}), "0/1 nodes are available: 1 Insufficient cpu."),
    (pod({"cpu": "4"}, {"cpu": "1"}), None),  # the request, not the limit, is what must fit
    (pod({"memory": "9Gi", "nvidia.com/gpu": 1}),
     "0/1 nodes are available: 1 Insufficient memory, 1 Insufficient nvidia.com/gpu."),
    (pod(selector={"nvidia.com/gpu.product": "NVIDIA-H100"}),
     "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."),
])
def test_unschedulable_message(spec, message):
    got = unschedulable_message(spec, NODE)
    assert (got is None) if message is None else got.startswith(message)


def test_parse_quantity():
    assert parse_quantity("500m") == 0.5 and parse_quantity("8Gi") == 8 * 2**30 and parse_quantity(2) == 2
    assert parse_quantity("1G") == 1e9
    with pytest.raises(ValueError):
        parse_quantity("lots")
