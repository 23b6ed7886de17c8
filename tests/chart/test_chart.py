"""The Helm chart, rendered and linted by real Helm (helm-python-sdk), validated against Kubernetes 1.32 schemas.

Also: the Deployment's env is what kubeforge.settings.Settings reads, the RBAC rules cover every API call the
operator makes, and the chart ships exactly the CRDs in crds/.
"""

from __future__ import annotations

import ast
import os
import subprocess
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

helm = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from kubeforge.api.kinds import KINDS  # noqa: E402
from kubeforge.api.meta import GROUP  # noqa: E402
from kubeforge.settings import Settings  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "kubeforge"
CRDS = REPO_ROOT / "crds"
KUBE_VERSION = "1.32.0"
KUBE_VERSIONS = ["1.27.0", KUBE_VERSION]  # Chart.yaml kubeVersion >=1.27, and the newest schemas shipped
RELEASE, NAMESPACE = "kf", "kubeforge-system"
PLURALS = [info.plural for info in KINDS]

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"settings": {"watchNamespace": "team-a"}},
    "no-rbac": {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "byo-sa"}},
    "custom-image": {
        "image": {"repository": "registry.example.com/ml/kubeforge-operator", "tag": "1.2.3", "pullPolicy": "Always"},
        "workloadImage": {"repository": "registry.example.com/ml/kubeforge-workloads", "tag": "1.2.3-cu124"},
        "imagePullSecrets": [{"name": "regcred"}],
    },
    "lifecycle": {
        "uninstall": {"resources": "delete", "timeoutSeconds": 60},
        "crds": {"keep": False},
        "serviceAccount": {"automount": False},
        "health": {"enabled": False},
        "settings": {"watchNamespace": "team-b"},
    },
    "no-crds-no-hook": {"crds": {"enabled": False}, "uninstall": {"resources": "none"}},
    "everything": {
        "fullnameOverride": "forge",
        "settings": {
            "bucket": "genai-artifacts",
            "s3EndpointUrl": "http://minio.minio.svc:9000",
            "mlflowTrackingUri": "http://mlflow.mlflow.svc:5000",
            "reconcilePeriodSeconds": 2.5,
            "heartbeatPollSeconds": 12,
            "progressWriteSeconds": 0,
            "startupJitterSeconds": 2.5,
            "watchNamespace": "ml",
            "workloadEnvSecret": "ml-workload-env",
            "rayVersion": "2.60.0",
            "rayjobTtlSeconds": 600,
            "workloadEnvSecretRequired": False,
        },
        "rayPods": {
            "head": {"cpus": 1.5, "memory": "6Gi"},
            "gpuNodeLabel": "nvidia.com/gpu.product",
            "labels": {"team": "ml"},
            "annotations": {"cost-center": "42"},
            "serviceAccountName": "ray-pods",
            "priorityClassName": "ml-batch",
            "imagePullSecrets": [{"name": "regcred"}],
            "nodeSelector": {"pool": "ml"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "preference": {"matchExpressions": [{"key": "disk", "operator": "In",
                                                                   "values": ["ssd"]}]}}]}},
            "podSecurityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 100,
                                   "seccompProfile": {"type": "RuntimeDefault"}},
            "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": False,
                                "seccompProfile": {"type": "Localhost", "localhostProfile": "ray.json"}},
        },
        "credentials": {"existingSecret": "kubeforge-s3"},
        "extraEnv": [{"name": "AWS_DEFAULT_REGION", "value": "us-east-1"}],
        "health": {"enabled": True, "port": 8081},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/kf"}},
        "rbac": {"aggregateToDefaultRoles": False},
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]}]}}},
        "podAnnotations": {"prometheus.io/scrape": "false"},
        "podLabels": {"team": "ml-platform"},
        "resources": {"requests": {"cpu": "200m", "memory": "300Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
    },
}

# Every Kubernetes API call the operator makes, traced to the code that makes it: (apiGroup, resource, verb, where).
# The chart's operator RBAC must grant exactly these (test_rbac_grants_exactly_the_operator_calls).
OPERATOR_CALLS: list[tuple[str, str, str, str]] = [
    # kopf: handlers on every kind (kubeforge.controllers.wiring)
    *[(GROUP, p, verb, "kopf watch-stream of handled resources") for p in PLURALS for verb in ("list", "watch")],
    *[(GROUP, p, "patch", "kopf: progress annotations, finalizer add/remove") for p in PLURALS],
    *[(GROUP, f"{p}/status", "patch", "Cluster.patch_status / kopf patch.status") for p in PLURALS],
    *[(GROUP, p, "get", "Cluster.get_object (re-read after a conflict)") for p in PLURALS],
    # ownerReferences with blockOwnerDeletion=True on children (OwnerReferencesPermissionEnforcement)
    *[(GROUP, f"{p}/finalizers", "update", "launch.names.owner_reference") for p in PLURALS],
    # children: RayJobs (batch kinds) and RayServices (ServingEndpoint)
    *[("ray.io", plural, verb, "Cluster.children_of (list), kopf watch of children (watch), Cluster.create_rayjob "
       "(create, get on 409), Cluster.apply (server-side apply = patch), Cluster.delete_child (delete)")
      for plural in ("rayjobs", "rayservices") for verb in ("get", "list", "watch", "create", "patch", "delete")],
    *[("ray.io", f"{plural}/status", "get", "Cluster: children's status read")
      for plural in ("rayjobs", "rayservices")],
    # kopf.event() in wiring, prerequisites Event on the operator pod (core/v1 Events, POST)
    ("", "events", "create", "kopf.event, main.check_prerequisites_at_startup"),
    ("", "secrets", "get", "prerequisites.workload_secret_exists (resourceNames: the workload Secret)"),
    # kopf scanning (kopf._core.reactor.observation): CRDs always, namespaces only when not cluster-wide
    ("apiextensions.k8s.io", "customresourcedefinitions", "list", "kopf resource_observer"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch", "kopf resource_observer"),
    ("", "namespaces", "list", "kopf namespace_observer (namespaced install)"),
    ("", "namespaces", "watch", "kopf namespace_observer (namespaced install)"),
]
CLUSTER_SCOPED = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}
NAMESPACED_ONLY = {("", "namespaces")}  # kopf observes namespaces only when not cluster-wide
# kubernetes client methods -> verb; a method the operator calls that is not listed here fails the coverage test.
# get_api_resources is discovery (GET /apis/ray.io/v1), open to every authenticated user.
API_METHOD_VERBS = {
    "list_namespaced_custom_object": "list",
    "create_namespaced_custom_object": "create",
    "delete_namespaced_custom_object": "delete",
    "get_namespaced_custom_object": "get",
    "patch_namespaced_custom_object": "patch",
    "patch_namespaced_custom_object_status": "patch",
    "read_namespaced_secret": "get",
    "create_namespaced_event": "create",
    "get_api_resources": None,
}
API_METHOD = r"^(list|create|delete|get|patch|read|replace)_(namespaced|cluster)_|^get_api_resources$"
CALLERS = {"cluster.py": "Cluster.", "prerequisites.py": "prerequisites.", "main.py": "main."}


# ---------------------------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


_RENDER_CACHE: dict[str, list[dict]] = {}


def render(chart, name: str, values: dict | None = None) -> list[dict]:
    """Rendered template objects (no CRDs, no NOTES) for a value set."""
    key = name if values is None else repr((name, values))
    if key not in _RENDER_CACHE:
        values = VALUE_SETS[name] if values is None else values
        manifests = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        objs = []
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt"):
                continue
            objs.extend(doc for doc in yaml.safe_load_all(text) if doc)
        _RENDER_CACHE[key] = objs
    return _RENDER_CACHE[key]


def only(objs: list[dict], kind: str) -> dict:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def of_kind(objs: list[dict], *kinds: str) -> list[dict]:
    return [o for o in objs if o["kind"] in kinds]


def container(objs: list[dict]) -> dict:
    (c,) = only(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def plain_env(objs: list[dict]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(objs)["env"] if "value" in e}


def allows(rules: list[dict], group: str, resource: str, verb: str) -> bool:
    for rule in rules:
        if group in rule.get("apiGroups", []) and resource in rule.get("resources", []) \
                and verb in rule.get("verbs", []):
            return True
    return False


def granted(rules: list[dict]) -> set[tuple]:
    """(group, resource, verb, resourceNames or None) for every combination the rules allow."""
    return {(g, r, v, tuple(rule["resourceNames"]) if rule.get("resourceNames") else None)
            for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def rules_in(objs: list[dict], namespace: str) -> list[dict]:
    """Rules bound to the operator's ServiceAccount that apply in `namespace` (cluster-wide ones included)."""
    sa = only(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    roles = {(o["kind"], o["metadata"]["name"]): o for o in of_kind(objs, "Role", "ClusterRole")}
    rules = []
    for binding in of_kind(objs, "RoleBinding", "ClusterRoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa and s["namespace"] == NAMESPACE
                   for s in binding["subjects"]):
            continue
        if binding["kind"] == "RoleBinding" and binding["metadata"]["namespace"] != namespace:
            continue
        rules.extend(roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])]["rules"])
    return rules


def operator_rules(objs: list[dict]) -> tuple[list[dict], list[dict]]:
    """(rules effective in the watched namespace, cluster-scoped rules) bound to the operator's ServiceAccount."""
    sa = only(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    roles = {(o["kind"], o["metadata"]["name"]): o for o in of_kind(objs, "Role", "ClusterRole")}
    namespaced, cluster = [], []
    for binding in of_kind(objs, "RoleBinding", "ClusterRoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa and s["namespace"] == NAMESPACE
                   for s in binding["subjects"]):
            continue
        role = roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])]
        namespaced.extend(role["rules"])
        if binding["kind"] == "ClusterRoleBinding":
            cluster.extend(role["rules"])
    return namespaced, cluster


# ---------------------------------------------------------------------------------------------- lint, schemas

@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_strict(name, kube_version):
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE, kube_version=f"v{kube_version}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_manifest_validates_against_kubernetes_schemas(chart, name, kube_version):
    objs = render(chart, name)
    assert objs
    for obj in objs:
        kubernetes_validate.validate(obj, kube_version, strict=True)
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            assert obj["metadata"].get("namespace") in (NAMESPACE, VALUE_SETS[name].get("settings", {})
                                                        .get("watchNamespace")), obj["metadata"]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_crds_validate_against_kubernetes_schemas(chart, kube_version):
    crds = of_kind(render(chart, "default"), "CustomResourceDefinition")
    assert len(crds) == len(KINDS)
    for crd in crds:
        kubernetes_validate.validate(crd, kube_version, strict=True)


@pytest.mark.parametrize("bad", [
    {"image": {"repository": "x", "pullPolicy": "Sometimes"}},
    {"settings": {"reconcilePeriodSeconds": 0}},
    {"settings": {"watchNamespace": "Not_A_Namespace"}},
    {"settings": {"s3EndpointUrl": "minio:9000"}},
    {"replicaCount": 3},
    {"rbac": {"create": "yes"}},
    {"rayPods": {"head": {"cpus": 2, "memory": "8 GB"}}},
    {"rayPods": {"imagePullSecrets": ["regcred"]}},
    {"rayPods": {"gpuNodeLabel": "not a label"}},
    {"rayPods": {"nodeSelector": {"gpu": True}}},
    {"settings": {"workloadEnvSecretRequired": "yes"}},
])
def test_values_schema_rejects_bad_values(chart, bad):
    with pytest.raises(helm.HelmValuesError):
        chart.render(values=bad, name=RELEASE, namespace=NAMESPACE, is_install=True)


def test_default_values_match_settings_defaults(chart):
    values, defaults = chart.values["settings"], Settings()
    assert values["bucket"] == defaults.bucket
    assert values["workloadEnvSecret"] == defaults.workload_env_secret
    assert values["rayVersion"] == defaults.ray_version
    assert values["rayjobTtlSeconds"] == defaults.rayjob_ttl_seconds
    assert values["reconcilePeriodSeconds"] == defaults.reconcile_period_seconds
    assert values["heartbeatPollSeconds"] == defaults.heartbeat_poll_seconds
    assert values["progressWriteSeconds"] == defaults.progress_write_seconds
    assert values["startupJitterSeconds"] == defaults.startup_jitter_seconds
    assert values["workloadEnvSecretRequired"] == defaults.workload_env_secret_required
    pods = chart.values["rayPods"]
    assert (pods["head"]["cpus"], pods["head"]["memory"]) == (defaults.ray_head_cpus, defaults.ray_head_memory)
    assert pods["podSecurityContext"] == defaults.ray_pod_security_context
    assert pods["securityContext"] == defaults.ray_container_security_context
    assert chart.metadata["appVersion"] == "0.1.0"
    assert defaults.workload_image.endswith(":" + chart.metadata["appVersion"])


# ---------------------------------------------------------------------------------------------- Deployment

def test_deployment_runs_one_hardened_operator(chart):
    objs = render(chart, "default")
    deploy = only(objs, "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    c = container(objs)
    assert c["command"] + c["args"] == ["kubeforge", "operator"]
    assert c["image"] == "ghcr.io/kubeforge/kubeforge-operator:0.1.0"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"] is True
    assert {"mountPath": "/tmp", "name": "tmp"} in c["volumeMounts"]
    # kopf's liveness endpoint, on by default (main.run_operator passes KUBEFORGE_LIVENESS_ENDPOINT to kopf)
    assert c["ports"] == [{"name": "health", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert plain_env(objs)["KUBEFORGE_LIVENESS_ENDPOINT"] == "http://0.0.0.0:8080/healthz"
    assert pod["automountServiceAccountToken"] is True
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"] if "valueFrom" in e} == {
        "POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace", "POD_UID": "metadata.uid"}
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert "envFrom" not in c


def test_settings_read_from_the_deployment_env(chart, monkeypatch):
    values = VALUE_SETS["everything"]
    env = plain_env(render(chart, "everything"))
    for name in [n for n in os.environ if n.startswith("KUBEFORGE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = Settings()
    want = values["settings"]
    assert s.bucket == want["bucket"]
    assert s.s3_endpoint_url == want["s3EndpointUrl"]
    assert s.mlflow_tracking_uri == want["mlflowTrackingUri"]
    assert s.reconcile_period_seconds == want["reconcilePeriodSeconds"]
    assert (s.heartbeat_poll_seconds, s.progress_write_seconds, s.startup_jitter_seconds) == (12, 0, 2.5)
    assert s.namespace == want["watchNamespace"]
    assert s.workload_env_secret == want["workloadEnvSecret"]
    assert s.ray_version == want["rayVersion"]
    assert s.rayjob_ttl_seconds == want["rayjobTtlSeconds"]
    assert s.workload_image == "ghcr.io/kubeforge/kubeforge-workloads:0.1.0"
    assert s.workload_env_secret_required is False
    pods = values["rayPods"]
    assert (s.ray_head_cpus, s.ray_head_memory) == (pods["head"]["cpus"], pods["head"]["memory"])
    assert s.gpu_node_label == pods["gpuNodeLabel"]
    assert (s.ray_pod_labels, s.ray_pod_annotations) == (pods["labels"], pods["annotations"])
    assert (s.ray_service_account_name, s.ray_priority_class_name) == ("ray-pods", "ml-batch")
    assert s.ray_image_pull_secrets == pods["imagePullSecrets"]
    assert (s.ray_node_selector, s.ray_tolerations, s.ray_affinity) == (
        pods["nodeSelector"], pods["tolerations"], pods["affinity"])
    assert s.ray_pod_security_context == pods["podSecurityContext"]
    assert s.ray_container_security_context == pods["securityContext"]


def test_default_env_gives_default_settings_with_unset_optionals(chart, monkeypatch):
    env = plain_env(render(chart, "default"))
    for name in [n for n in os.environ if n.startswith("KUBEFORGE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = Settings()
    assert s.s3_endpoint_url is None and s.mlflow_tracking_uri is None and s.namespace is None
    assert s.bucket == "kubeforge" and s.reconcile_period_seconds == 10 and s.rayjob_ttl_seconds == 3600
    assert s.workload_image == "ghcr.io/kubeforge/kubeforge-workloads:0.1.0"
    defaults = Settings.model_construct()  # the class defaults, no environment
    for field in Settings.model_fields:
        if field.startswith(("ray_", "gpu_")) or field == "workload_env_secret_required":
            assert getattr(s, field) == getattr(defaults, field), field


def test_ray_pods_from_the_default_values_pass_the_restricted_pod_security_standard(chart, monkeypatch):
    """A namespace labelled pod-security.kubernetes.io/enforce=restricted admits the Ray pods of a default install."""
    from kubeforge.api.kinds import kind_info
    from kubeforge.controllers.batch import workload_context
    from kubeforge.launch.rayjob import build_rayjob
    from tests.unit.pod_security import violations

    for name in [n for n in os.environ if n.startswith("KUBEFORGE_")]:
        monkeypatch.delenv(name)
    for name, value in plain_env(render(chart, "default")).items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    for path in sorted((REPO_ROOT / "examples").glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            if not obj or obj.get("kind") != "FineTune":
                continue
            obj["metadata"].update(namespace="restricted", uid="0123456789abcdef", generation=1)
            info = kind_info(obj["kind"])
            spec = info.spec_model.model_validate(obj["spec"])
            rayjob = build_rayjob(obj, spec, workload_context(obj, spec, 1, settings), info.workload, settings)
            cluster = rayjob["spec"]["rayClusterSpec"]
            templates = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
            for template in templates:
                assert violations(template["spec"]) == [], (path.name, obj["metadata"]["name"])


def test_every_settings_field_has_a_helm_value(chart):
    """A new field in Settings fails here until the chart maps it."""
    env = plain_env(render(chart, "everything"))
    kubeforge_env = {n for n in env if n.startswith("KUBEFORGE_")}
    fields = {f"KUBEFORGE_{name.upper()}" for name in Settings.model_fields}
    assert fields <= kubeforge_env, f"Settings fields without a Helm value: {sorted(fields - kubeforge_env)}"
    unknown = kubeforge_env - fields - {"KUBEFORGE_LIVENESS_ENDPOINT"}
    assert not unknown, f"env the operator does not read: {sorted(unknown)}"


def test_custom_image_and_pull_secrets(chart):
    objs = render(chart, "custom-image")
    c = container(objs)
    assert c["image"] == "registry.example.com/ml/kubeforge-operator:1.2.3"
    assert c["imagePullPolicy"] == "Always"
    assert plain_env(objs)["KUBEFORGE_WORKLOAD_IMAGE"] == "registry.example.com/ml/kubeforge-workloads:1.2.3-cu124"
    assert only(objs, "Deployment")["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


def test_everything_value_set_reaches_the_pod(chart):
    objs = render(chart, "everything")
    deploy = only(objs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    c = container(objs)
    values = VALUE_SETS["everything"]
    assert deploy["metadata"]["name"] == "forge"
    assert c["envFrom"] == [{"secretRef": {"name": "kubeforge-s3"}}]
    assert plain_env(objs)["AWS_DEFAULT_REGION"] == "us-east-1"
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == values["affinity"]
    assert c["resources"] == values["resources"]
    assert deploy["spec"]["template"]["metadata"]["labels"]["team"] == "ml-platform"
    (sa,) = [o for o in of_kind(objs, "ServiceAccount") if o["metadata"]["name"] == "forge"]
    assert sa["metadata"]["annotations"] == values["serviceAccount"]["annotations"]
    # health: kopf.operator(liveness_endpoint="http://0.0.0.0:8081/healthz") answers GET /healthz
    assert c["ports"] == [{"name": "health", "containerPort": 8081, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert plain_env(objs)["KUBEFORGE_LIVENESS_ENDPOINT"] == "http://0.0.0.0:8081/healthz"


def test_liveness_endpoint_is_read_by_the_operator():
    if "liveness_endpoint" not in Settings.model_fields:
        pytest.skip("Settings has no liveness_endpoint yet: main.run_operator does not pass "
                    "liveness_endpoint to kopf.operator(), so health.enabled must stay false")
    import inspect

    from kubeforge import main

    assert "liveness_endpoint" in inspect.getsource(main.run_operator)


# ---------------------------------------------------------------------------------------------- RBAC

def test_chart_plurals_are_the_kinds():
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    block = helpers.split('define "kubeforge.plurals"')[1].split("{{- end }}")[0]
    listed = [line.strip()[2:] for line in block.splitlines() if line.strip().startswith("- ")]
    assert listed == PLURALS


@pytest.mark.parametrize("module", CALLERS)
def test_operator_calls_list_is_complete_for_the_modules_calling_the_api(module):
    """Every Kubernetes client method a module calls maps to a verb that OPERATOR_CALLS lists for that module."""
    import re

    source = (REPO_ROOT / "operator" / "kubeforge" / module).read_text()
    called = {node.func.attr for node in ast.walk(ast.parse(source))
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and re.search(API_METHOD, node.func.attr)}
    assert called, f"kubeforge/{module} no longer calls the Kubernetes API: update CALLERS and OPERATOR_CALLS"
    unknown = called - set(API_METHOD_VERBS)
    assert not unknown, f"new Kubernetes calls in kubeforge/{module}, add them to OPERATOR_CALLS: {unknown}"
    verbs_listed = {verb for _, _, verb, where in OPERATOR_CALLS if CALLERS[module] in where}
    assert {API_METHOD_VERBS[m] for m in called} - {None} <= verbs_listed


def test_operator_calls_cover_kopf_handlers():
    """Every resource kopf handles is in OPERATOR_CALLS with list/watch (and patch, status patch for our kinds)."""
    registry = kopf.OperatorRegistry()
    from kubeforge.controllers.wiring import register

    register(Settings(), registry)
    handlers = [*registry._spawning.get_all_handlers(), *registry._changing.get_all_handlers(),
                *registry._watching.get_all_handlers(), *registry._indexing.get_all_handlers()]
    assert handlers
    calls = {(g, r, v) for g, r, v, _ in OPERATOR_CALLS}
    for handler in handlers:
        group, plural = handler.selector.group, handler.selector.any_name or handler.selector.plural
        for verb in ("list", "watch", "patch") if group == GROUP else ("list", "watch"):
            assert (group, plural, verb) in calls, (handler.id, group, plural, verb)
        if group == GROUP:
            assert (group, f"{plural}/status", "patch") in calls


def expected_grants(values: dict) -> set[tuple]:
    settings = values.get("settings", {})
    names = None
    expected = set()
    for group, resource, verb, _ in OPERATOR_CALLS:
        if (group, resource) in NAMESPACED_ONLY and not settings.get("watchNamespace"):
            continue
        if (group, resource) == ("", "secrets"):
            if not settings.get("workloadEnvSecretRequired", True):
                continue
            names = (settings.get("workloadEnvSecret", Settings().workload_env_secret),)
            expected.add((group, resource, verb, names))
            continue
        expected.add((group, resource, verb, None))
    return expected


@pytest.mark.parametrize("name", ["default", "everything", "namespaced"])
def test_rbac_grants_exactly_the_operator_calls(chart, name):
    """Missing: the operator fails with 403. Superfluous: more than it needs (least privilege)."""
    objs = render(chart, name)
    watched = VALUE_SETS[name].get("settings", {}).get("watchNamespace") or "any-namespace"
    got, want = granted(rules_in(objs, watched)), expected_grants(VALUE_SETS[name])
    assert not want - got, f"missing: {sorted(want - got, key=str)}"
    assert not got - want, f"granted but not called: {sorted(got - want, key=str)}"


def test_a_namespaced_operator_may_only_post_events_in_its_own_namespace(chart):
    objs = render(chart, "namespaced")
    cluster_wide = granted([r for b in of_kind(objs, "ClusterRoleBinding")
                            for r in only([o for o in of_kind(objs, "ClusterRole")
                                           if o["metadata"]["name"] == b["roleRef"]["name"]], "ClusterRole")["rules"]])
    own = granted(rules_in(objs, NAMESPACE)) - cluster_wide
    assert own == {("", "events", "create", None)}


def test_the_secret_rule_is_gone_when_the_workload_secret_is_optional(chart):
    objs = render(chart, "opt-secret", {"settings": {"workloadEnvSecretRequired": False}})
    assert not any(r == "secrets" for _, r, _, _ in granted(rules_in(objs, "x")))


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rbac_is_least_privilege(chart, name):
    for role in of_kind(render(chart, name), "Role", "ClusterRole"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role["metadata"]["name"], rule)
            assert not {"pods", "configmaps", "pods/exec"} & set(rule["resources"]), rule
            if "secrets" in rule["resources"]:  # only whether the workload Secret exists
                assert rule["verbs"] == ["get"] and len(rule["resourceNames"]) == 1, rule
            if role["metadata"]["name"].endswith(("-edit", "-view")):
                continue  # aggregated user roles
            assert not {"escalate", "bind", "impersonate", "deletecollection", "update"} & set(rule["verbs"]) \
                or rule["resources"][0].endswith("/finalizers"), rule


def test_cluster_wide_install_uses_a_cluster_role(chart):
    objs = render(chart, "default")
    assert not of_kind(objs, "Role", "RoleBinding")
    names = {o["metadata"]["name"] for o in of_kind(objs, "ClusterRole")}
    assert names == {"kf-kubeforge", "kf-kubeforge-edit", "kf-kubeforge-view", "kf-kubeforge-uninstall"}
    assert "KUBEFORGE_NAMESPACE" not in plain_env(objs)


def test_namespaced_install_uses_a_role_in_the_watched_namespace(chart):
    objs = render(chart, "namespaced")
    role = next(o for o in of_kind(objs, "Role") if o["metadata"]["name"] == "kf-kubeforge")
    binding = next(o for o in of_kind(objs, "RoleBinding") if o["metadata"]["name"] == "kf-kubeforge")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "team-a"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kf-kubeforge", "namespace": NAMESPACE}]
    assert plain_env(objs)["KUBEFORGE_NAMESPACE"] == "team-a"
    # The only cluster-wide rights are read-only discovery of CRDs and namespaces.
    _, cluster = operator_rules(objs)
    assert {(g, r) for rule in cluster for g in rule["apiGroups"] for r in rule["resources"]} == CLUSTER_SCOPED
    assert {v for rule in cluster for v in rule["verbs"]} == {"list", "watch"}
    assert not any(allows(cluster, "ray.io", "rayjobs", v) for v in ("create", "list"))


def test_rbac_create_false_renders_no_rbac(chart):
    objs = render(chart, "no-rbac")
    assert not of_kind(objs, "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
    assert not of_kind(objs, "ServiceAccount")
    assert only(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "byo-sa"
    assert only(objs, "Job")["spec"]["template"]["spec"]["serviceAccountName"] == "byo-sa"


def test_aggregated_user_roles(chart):
    objs = render(chart, "default")
    edit = next(o for o in objs if o["metadata"]["name"] == "kf-kubeforge-edit")
    view = next(o for o in objs if o["metadata"]["name"] == "kf-kubeforge-view")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    for plural in PLURALS:
        assert allows(edit["rules"], GROUP, plural, "create")
        assert allows(view["rules"], GROUP, f"{plural}/status", "get")
        assert not allows(view["rules"], GROUP, plural, "create")


# ---------------------------------------------------------------------------------------------- CRDs

def test_chart_crds_equal_generated_crds(chart):
    """The chart ships exactly crds/ (scripts/sync-chart-crds.sh copies them to files/crds/) and renders them."""
    source = {p.name: p.read_text() for p in sorted(CRDS.glob("*.yaml"))}
    shipped = {p.name: p.read_text() for p in sorted((CHART / "files" / "crds").glob("*.yaml"))}
    assert source, "crds/ is empty"
    assert shipped.keys() == source.keys(), "run scripts/sync-chart-crds.sh"
    stale = [name for name in source if shipped[name] != source[name]]
    assert not stale, f"chart CRDs differ from crds/: {stale}; run scripts/sync-chart-crds.sh"
    rendered = {o["metadata"]["name"]: o for o in of_kind(render(chart, "default"), "CustomResourceDefinition")}
    assert set(rendered) == {f"{p}.{GROUP}" for p in PLURALS}
    for text in source.values():
        want = yaml.safe_load(text)
        got = rendered[want["metadata"]["name"]]
        assert {**got, "metadata": {}} == {**want, "metadata": {}}  # the schema, unchanged by the round trip


def test_crds_are_templates_that_helm_upgrades_and_keeps_on_uninstall(chart):
    """Not in crds/ (Helm installs those once and never upgrades them): cert-manager's crds.enabled/keep."""
    assert chart.crds == [] and not (CHART / "crds").exists()
    for crd in of_kind(render(chart, "default"), "CustomResourceDefinition"):
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    for crd in of_kind(render(chart, "lifecycle"), "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})
    assert not of_kind(render(chart, "no-crds-no-hook"), "CustomResourceDefinition")


def hook_objects(objs: list[dict]) -> list[dict]:
    return [o for o in objs if "helm.sh/hook" in o["metadata"].get("annotations", {})]


def test_uninstall_orphan_hook_runs_after_the_operator_is_gone_with_list_and_patch_only(chart):
    hooks = hook_objects(render(chart, "default"))
    assert sorted(o["kind"] for o in hooks) == ["ClusterRole", "ClusterRoleBinding", "Job", "ServiceAccount"]
    assert {o["metadata"]["annotations"]["helm.sh/hook"] for o in hooks} == {"post-delete"}
    job = only(hooks, "Job")
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] + c["args"] == ["python", "-m", "kubeforge.uninstall", "--policy=orphan", "--timeout=300"]
    assert c["image"] == container(render(chart, "default"))["image"]
    assert pod["serviceAccountName"] == "kf-kubeforge-uninstall" and pod["restartPolicy"] == "Never"
    assert granted(only(hooks, "ClusterRole")["rules"]) == {(GROUP, p, v, None) for p in PLURALS
                                                            for v in ("list", "patch")}
    binding = only(hooks, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kf-kubeforge-uninstall",
                                    "namespace": NAMESPACE}]
    # Helm creates hooks in weight order: the ServiceAccount and its rights before the Job that uses them.
    weights = {o["kind"]: int(o["metadata"]["annotations"]["helm.sh/hook-weight"]) for o in hooks}
    assert max(w for kind, w in weights.items() if kind != "Job") < weights["Job"]
    assert all("hook-succeeded" in o["metadata"]["annotations"]["helm.sh/hook-delete-policy"] for o in hooks)


def test_uninstall_delete_hook_runs_before_the_operator_goes_in_the_watched_namespace_only(chart):
    objs = render(chart, "lifecycle")
    hooks = hook_objects(objs)
    assert {o["metadata"]["annotations"]["helm.sh/hook"] for o in hooks} == {"pre-delete"}
    role = only(hooks, "Role")
    assert role["metadata"]["namespace"] == "team-b"
    assert granted(role["rules"]) == {(GROUP, p, v, None) for p in PLURALS for v in ("list", "patch", "delete")}
    (c,) = only(hooks, "Job")["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["--policy=delete", "--timeout=60", "--namespace=team-b"]
    assert only(objs, "Job")["spec"]["activeDeadlineSeconds"] == 180
    assert not hook_objects(render(chart, "no-crds-no-hook"))


def test_automount_false_reaches_the_pod_and_liveness_can_be_turned_off(chart):
    objs = render(chart, "lifecycle")
    assert only(objs, "Deployment")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    (sa,) = [o for o in of_kind(objs, "ServiceAccount") if "helm.sh/hook" not in o["metadata"].get("annotations", {})]
    assert sa["automountServiceAccountToken"] is False
    c = container(objs)
    assert "livenessProbe" not in c and "KUBEFORGE_LIVENESS_ENDPOINT" not in plain_env(objs)


def test_sync_script_check_mode():
    result = subprocess.run([str(REPO_ROOT / "scripts" / "sync-chart-crds.sh"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_notes_render(chart):
    manifests = chart.render(values=VALUE_SETS["namespaced"], name=RELEASE, namespace=NAMESPACE, is_install=True)
    notes = next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))
    assert "namespace team-a only" in notes and "kubeforge-workload-env" in notes
