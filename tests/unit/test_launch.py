"""Every RayJob the operator builds validates against KubeRay's own CRD schema."""

import hashlib
import re

import pytest
import yaml

from kubeforge.api import KINDS
from kubeforge.api.shared import CommonSpec
from kubeforge.api.workload import CONTEXT_ENV, WorkloadContext
from kubeforge.controllers.batch import workload_context
from kubeforge.controllers.registry import BATCH_KINDS
from kubeforge.launch.names import attempt_name, child_annotations, child_labels, label_value
from kubeforge.launch.rayjob import build_rayjob, deep_merge
from kubeforge.settings import Settings
from tests.conftest import KUBERAY_CRDS, REPO_ROOT
from tests.unit.pod_security import violations
from tests.unit.schemas import crd_schema, schema_errors

SETTINGS = Settings()


def example_objects():
    for path in sorted((REPO_ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion") == "kubeforge.dev/v1alpha1" and doc["kind"] in BATCH_KINDS:
                doc["metadata"].update(namespace="default", uid="0123456789abcdef", generation=1)
                yield pytest.param(doc, id=f"{path.stem}-{doc['metadata']['name']}")


def finetune_example() -> dict:
    return next(p.values[0] for p in example_objects() if p.values[0]["kind"] == "FineTune")


def rayjob_for(obj, attempt=1, settings=SETTINGS, **spec_overrides):
    info = next(i for i in KINDS if i.kind == obj["kind"])
    spec = info.spec_model.model_validate({**obj["spec"], **spec_overrides})
    context = workload_context(obj, spec, attempt, settings)
    return build_rayjob(obj, spec, context, info.workload, settings)


def pod_templates(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]


@pytest.mark.parametrize("obj", list(example_objects()))
def test_example_rayjobs_validate_against_kuberay_crd(obj):
    rayjob = rayjob_for(obj)
    assert schema_errors(crd_schema(KUBERAY_CRDS / "ray.io_rayjobs.yaml", "v1"), rayjob) == []


@pytest.mark.parametrize("overrides", [
    {"ray": {"clusterSelector": {"ray.io/cluster": "shared"}}},
    {"resources": {"workers": 4, "gpusPerWorker": 8, "gpuType": "H100", "memory": "200Gi", "cpusPerWorker": 16}},
    {"ray": {"image": "my/image:1", "rayClusterSpec": {"headGroupSpec": {"serviceType": "ClusterIP"}},
             "runtimeEnv": {"pip": ["rich"], "env_vars": {"FOO": "1"}}}},
])
def test_variants_validate_against_kuberay_crd(overrides):
    obj = finetune_example()
    rayjob = rayjob_for(obj, **overrides)
    assert schema_errors(crd_schema(KUBERAY_CRDS / "ray.io_rayjobs.yaml", "v1"), rayjob) == []


def test_rayjob_shape():
    obj = finetune_example()
    rayjob = rayjob_for(obj, attempt=3)
    spec = rayjob["spec"]
    assert rayjob["metadata"]["name"] == f"{obj['metadata']['name']}-3"
    assert spec["entrypoint"] == "python -m kubeforge_workloads.finetune"
    assert spec["backoffLimit"] == 0 and spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    context = WorkloadContext.model_validate_json(runtime_env["env_vars"][CONTEXT_ENV])
    assert context.attempt == 3 and context.spec == obj["spec"]
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["envFrom"][0]["secretRef"]["name"] == SETTINGS.workload_env_secret


def test_cluster_selector_replaces_the_ephemeral_cluster():
    obj = finetune_example()
    spec = rayjob_for(obj, ray={"clusterSelector": {"ray.io/cluster": "shared"}})["spec"]
    assert "rayClusterSpec" not in spec and spec["clusterSelector"] == {"ray.io/cluster": "shared"}


def test_user_runtime_env_cannot_override_the_context():
    obj = finetune_example()
    spec = rayjob_for(obj, ray={"runtimeEnv": {"env_vars": {CONTEXT_ENV: "{}", "X": "1"}}})["spec"]
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert env["X"] == "1" and env[CONTEXT_ENV] != "{}"


KUBERAY_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # DNS-1035, as KubeRay's ValidateRayJobMetadata
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@pytest.mark.parametrize("owner", ["ft", "a" * 44, "b" * 46, "c" * 63, "d" * 120, "e" * 253, "7th-run",
                                   "team.docs.assistant", "x.y-z.0", "0", "a" * 252 + "9"])
@pytest.mark.parametrize("attempt", [1, 12, 101])
def test_every_valid_resource_name_maps_to_a_rayjob_name_kuberay_accepts(owner, attempt):
    name = attempt_name(owner, attempt)
    assert len(name) <= 47 and KUBERAY_NAME.match(name), name
    assert name.endswith(f"-{attempt}")
    assert len(name) + len("-abcde") <= 53  # KubeRay's RayCluster name for the job


def test_names_that_fit_stay_readable_and_others_carry_a_stable_hash():
    assert attempt_name("ft", 2) == "ft-2"
    assert attempt_name("a" * 45, 1) == "a" * 45 + "-1"
    # sha256, not Python's per-process hash(): the same in every operator process
    assert attempt_name("team.docs.assistant", 1) == "team-docs-assistant-b99513db-1"
    assert attempt_name("7th-run", 3) == "r7th-run-" + hashlib.sha256(b"7th-run").hexdigest()[:8] + "-3"
    assert attempt_name("a" * 46, 1).startswith("a" * 36 + "-") and len(attempt_name("a" * 46, 1)) == 47


@pytest.mark.parametrize("first,second", [("a.b", "a-b"), ("c" * 60 + "x", "c" * 60 + "y"), ("7-run", "r7-run")])
def test_names_that_normalise_alike_get_different_children(first, second):
    assert attempt_name(first, 1) != attempt_name(second, 1)


@pytest.mark.parametrize("owner", ["ft", "team.docs.assistant", "d" * 63, "d" * 64, "e" * 253, "x." * 40 + "y"])
def test_owner_labels_are_valid_label_values_and_the_full_name_is_annotated(owner):
    obj = {"apiVersion": "kubeforge.dev/v1alpha1", "kind": "FineTune",
           "metadata": {"name": owner, "namespace": "ns", "uid": "u-1"}}
    labels = child_labels("FineTune", owner, "u-1", 1)
    assert all(len(v) <= 63 and LABEL_VALUE.match(v) for v in labels.values()), labels
    assert (labels["kubeforge.dev/name"] == owner) == (len(owner) <= 63)
    assert child_annotations(owner) == {"kubeforge.dev/owner-name": owner}
    assert label_value(owner) == label_value(owner)


def test_runtime_env_deep_merge_replaces_lists():
    assert deep_merge({"a": {"b": 1, "c": [1]}}, {"a": {"c": [2], "d": 3}}) == {"a": {"b": 1, "c": [2], "d": 3}}


# A platform team's Helm values `rayPods` as the operator reads them (KUBEFORGE_RAY_* env).
PLATFORM = SETTINGS.model_copy(update={
    "ray_head_cpus": 1.5, "ray_head_memory": "6Gi", "gpu_node_label": "cloud.example.com/accelerator",
    "ray_pod_labels": {"team": "ml"}, "ray_pod_annotations": {"cost-center": "42"},
    "ray_service_account_name": "ray-pods", "ray_priority_class_name": "ml-batch",
    "ray_image_pull_secrets": [{"name": "regcred"}],
    "ray_node_selector": {"pool": "ml"},
    "ray_tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    "ray_affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
    "ray_pod_security_context": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 100,
                                 "seccompProfile": {"type": "RuntimeDefault"}},
})
GPU = {"workers": 2, "gpusPerWorker": 1, "gpuType": "H100", "memory": "16Gi", "cpusPerWorker": 4}


def test_platform_defaults_reach_every_ray_pod_and_validate_against_kuberay():
    obj = finetune_example()
    rayjob = rayjob_for(obj, settings=PLATFORM, resources=GPU)
    assert schema_errors(crd_schema(KUBERAY_CRDS / "ray.io_rayjobs.yaml", "v1"), rayjob) == []
    head, worker = pod_templates(rayjob)
    for template in (head, worker):
        pod = template["spec"]
        assert template["metadata"] == {"labels": {"team": "ml"}, "annotations": {"cost-center": "42"}}
        assert pod["serviceAccountName"] == "ray-pods" and pod["priorityClassName"] == "ml-batch"
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert pod["tolerations"] == PLATFORM.ray_tolerations and pod["affinity"] == PLATFORM.ray_affinity
        assert pod["securityContext"] == PLATFORM.ray_pod_security_context
        assert pod["containers"][0]["securityContext"] == PLATFORM.ray_container_security_context
    assert head["spec"]["nodeSelector"] == {"pool": "ml"}
    assert worker["spec"]["nodeSelector"] == {"pool": "ml", "cloud.example.com/accelerator": "H100"}
    limits = head["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "1.5", "memory": "6Gi"} == head["spec"]["containers"][0]["resources"]["requests"]


def test_kubeforge_defaults_set_no_platform_fields_and_no_gpu_selector_without_its_label():
    obj = finetune_example()
    head, worker = pod_templates(rayjob_for(obj, resources=GPU))
    assert set(head) == set(worker) == {"spec"}
    assert set(worker["spec"]) == {"containers", "securityContext"}  # gpuType alone selects no node
    assert head["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}
    assert worker["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "4", "memory": "16Gi",
                                                                      "nvidia.com/gpu": 1}


def test_a_resource_override_merges_with_the_defaults_instead_of_replacing_lists():
    obj = finetune_example()
    override = {"headGroupSpec": {"template": {"spec": {
        "imagePullSecrets": [{"name": "team-cred"}],
        "containers": [{"name": "ray-head", "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
                        "securityContext": {"readOnlyRootFilesystem": False}}]}}},
        "workerGroupSpecs": [{"groupName": "workers", "template": {"spec": {
            "nodeSelector": {"pool": None, "disk": "ssd"},
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
            "containers": [{"name": "ray-worker", "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}]}}}]}
    rayjob = rayjob_for(obj, settings=PLATFORM, resources=GPU, ray={"rayClusterSpec": override})
    assert schema_errors(crd_schema(KUBERAY_CRDS / "ray.io_rayjobs.yaml", "v1"), rayjob) == []
    head, worker = pod_templates(rayjob)
    assert head["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "team-cred"}]
    (head_container,) = head["spec"]["containers"]
    assert head_container["env"] == [{"name": "NCCL_DEBUG", "value": "INFO"}]
    assert [p["name"] for p in head_container["ports"]] == ["gcs", "dashboard", "client"]
    assert head_container["envFrom"][0]["secretRef"]["name"] == SETTINGS.workload_env_secret
    assert head_container["securityContext"] == {**PLATFORM.ray_container_security_context,
                                                 "readOnlyRootFilesystem": False}
    (worker_container,) = worker["spec"]["containers"]
    assert worker_container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker_container["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]
    assert worker["spec"]["nodeSelector"] == {"cloud.example.com/accelerator": "H100", "disk": "ssd"}
    assert worker["spec"]["tolerations"] == PLATFORM.ray_tolerations
    assert len(rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]) == 1


@pytest.mark.parametrize("settings", [SETTINGS, PLATFORM], ids=["defaults", "platform"])
@pytest.mark.parametrize("obj", list(example_objects()))
def test_ray_pods_pass_the_restricted_pod_security_standard(obj, settings):
    for template in pod_templates(rayjob_for(obj, settings=settings, resources=GPU)):
        assert violations(template["spec"]) == []


def test_the_restricted_check_refuses_ray_pods_without_the_security_contexts():
    """What Ray pods looked like before: a namespace enforcing restricted refuses them."""
    obj = finetune_example()
    bare = SETTINGS.model_copy(update={"ray_pod_security_context": {}, "ray_container_security_context": {}})
    found = violations(pod_templates(rayjob_for(obj, settings=bare))[0]["spec"])
    assert found == ["allowPrivilegeEscalation must be false: container ray-head",
                     "runAsNonRoot must be true (pod or container): container ray-head",
                     "seccompProfile must be RuntimeDefault or Localhost (pod or container): container ray-head",
                     "capabilities must drop ALL: container ray-head"]
    privileged = {"containers": [{"name": "c", "securityContext": {
        **SETTINGS.ray_container_security_context, "privileged": True, "capabilities": {"drop": ["ALL"],
                                                                                      "add": ["SYS_ADMIN"]}}}],
        "securityContext": SETTINGS.ray_pod_security_context, "hostNetwork": True,
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
    assert len(violations(privileged)) == 6


def test_the_workload_secret_is_mounted_optional_only_when_not_required():
    obj = finetune_example()
    for required in (True, False):
        settings = SETTINGS.model_copy(update={"workload_env_secret_required": required})
        for template in pod_templates(rayjob_for(obj, settings=settings)):
            assert template["spec"]["containers"][0]["envFrom"] == [
                {"secretRef": {"name": SETTINGS.workload_env_secret, "optional": not required}}]


def test_a_list_item_without_its_merge_key_names_the_field():
    obj = finetune_example()
    with pytest.raises(ValueError, match=r"^spec\.ray\.rayClusterSpec\.headGroupSpec\.template\.spec\.containers\[0\] "
                                         "has no 'name'"):
        rayjob_for(obj, ray={"rayClusterSpec": {"headGroupSpec": {"template": {"spec": {"containers": [{}]}}}}})
