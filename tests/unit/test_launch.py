"""Every RayJob the operator builds validates against KubeRay's own CRD schema."""

import pytest
import yaml

from kubeforge.api import KINDS
from kubeforge.api.shared import CommonSpec
from kubeforge.api.workload import CONTEXT_ENV, WorkloadContext
from kubeforge.controllers.batch import workload_context
from kubeforge.launch.names import attempt_name
from kubeforge.launch.rayjob import build_rayjob, deep_merge
from kubeforge.settings import Settings
from tests.conftest import KUBERAY_CRDS, REPO_ROOT
from tests.unit.schemas import crd_schema, schema_errors

SETTINGS = Settings()


def example_objects():
    for path in sorted((REPO_ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion") == "kubeforge.dev/v1alpha1" and doc["kind"] == "FineTune":
                doc["metadata"].update(namespace="default", uid="0123456789abcdef", generation=1)
                yield pytest.param(doc, id=f"{path.stem}-{doc['metadata']['name']}")


def rayjob_for(obj, attempt=1, **spec_overrides):
    info = next(i for i in KINDS if i.kind == obj["kind"])
    spec = info.spec_model.model_validate({**obj["spec"], **spec_overrides})
    context = workload_context(obj, spec, attempt, SETTINGS)
    return build_rayjob(obj, spec, context, info.workload, SETTINGS)


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
    obj = next(iter(example_objects())).values[0]
    rayjob = rayjob_for(obj, **overrides)
    assert schema_errors(crd_schema(KUBERAY_CRDS / "ray.io_rayjobs.yaml", "v1"), rayjob) == []


def test_rayjob_shape():
    obj = next(iter(example_objects())).values[0]
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
    obj = next(iter(example_objects())).values[0]
    spec = rayjob_for(obj, ray={"clusterSelector": {"ray.io/cluster": "shared"}})["spec"]
    assert "rayClusterSpec" not in spec and spec["clusterSelector"] == {"ray.io/cluster": "shared"}


def test_user_runtime_env_cannot_override_the_context():
    obj = next(iter(example_objects())).values[0]
    spec = rayjob_for(obj, ray={"runtimeEnv": {"env_vars": {CONTEXT_ENV: "{}", "X": "1"}}})["spec"]
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert env["X"] == "1" and env[CONTEXT_ENV] != "{}"


def test_names_are_deterministic_and_dns_safe():
    long = "x" * 80
    assert attempt_name("ft", 2) == "ft-2"
    assert attempt_name(long, 12) == attempt_name(long, 12)
    assert len(attempt_name(long, 12)) <= 57 and attempt_name(long, 12).endswith("-12")


def test_deep_merge():
    assert deep_merge({"a": {"b": 1, "c": [1]}}, {"a": {"c": [2], "d": 3}}) == {"a": {"b": 1, "c": [2], "d": 3}}
