"""Strategic merge patch with Kubernetes' own patch strategies and merge keys (derived from its published
OpenAPI), and metadata.finalizers as each patch format treats it: a set union in strategic merge patch
(patchStrategy merge), a set in server-side apply (listType set), replaced by JSON merge patch and PUT."""

import importlib.resources
import json

import yaml

from kubeforge.dev.apiserver.strategies import KUBERNETES_VERSION, STRATEGIES, derive_all
from tests.conformance.conftest import gadget, raw

G, V, NS, P = "conformance.kubeforge.dev", "v1", "default", "gadgets"
SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
APPLY = "application/apply-patch+yaml"


def test_the_strategy_table_is_kubernetes_published_openapi():
    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"{KUBERNETES_VERSION}-local"
    definitions = json.loads((root / "_definitions.json").read_text())["$defs"]
    assert STRATEGIES == derive_all(definitions)
    assert STRATEGIES[("", "services")]["spec"]["fields"]["ports"] == {"key": "port", "strategy": "merge"}
    assert STRATEGIES[("", "pods")]["spec"]["fields"]["containers"]["fields"]["ports"]["key"] == "containerPort"


def test_service_ports_merge_on_port(server, core, kubectl):
    core.create_namespaced_service(NS, {"metadata": {"name": "smp-svc"}, "spec": {"ports": [
        {"name": "http", "port": 80, "targetPort": 8080}, {"name": "metrics", "port": 9000}]}})
    patched = raw(server, "PATCH", f"/api/v1/namespaces/{NS}/services/smp-svc",
                  {"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}, SMP).json()
    assert patched["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": 9090}, {"name": "metrics", "port": 9000}]
    kubectl("patch", "service", "smp-svc", "-p", json.dumps({"spec": {"ports": [{"port": 9000, "$patch": "delete"}]}}))
    assert [p.port for p in core.read_namespaced_service("smp-svc", NS).spec.ports] == [80]


def test_kubectl_apply_of_a_changed_service_port_keeps_one_port(kubectl, core):
    manifest = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "smp-apply"},
                "spec": {"selector": {"app": "x"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}
    kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    manifest["spec"]["ports"] = [{"name": "http", "port": 80, "targetPort": 9090}, {"name": "grpc", "port": 50051}]
    assert "configured" in kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest)).stdout
    ports = [(p.port, p.target_port) for p in core.read_namespaced_service("smp-apply", NS).spec.ports]
    assert ports == [(80, 9090), (50051, None)]


def test_finalizers_are_a_set_union_in_strategic_merge_patch(server, core, kubectl):
    core.create_namespaced_config_map(NS, {"metadata": {"name": "smp-fin", "finalizers": ["example.com/a"]}})
    path = f"/api/v1/namespaces/{NS}/configmaps/smp-fin"
    added = raw(server, "PATCH", path, {"metadata": {"finalizers": ["example.com/b", "example.com/a"]}}, SMP).json()
    assert added["metadata"]["finalizers"] == ["example.com/a", "example.com/b"]
    removed = raw(server, "PATCH", path, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["example.com/a"]}},
                  SMP).json()
    assert removed["metadata"]["finalizers"] == ["example.com/b"]
    kubectl("patch", "configmap", "smp-fin", "-p", '{"metadata":{"finalizers":["example.com/c"]}}')
    assert core.read_namespaced_config_map("smp-fin", NS).metadata.finalizers == ["example.com/b", "example.com/c"]
    replaced = raw(server, "PATCH", path, {"metadata": {"finalizers": ["example.com/d"]}}, MERGE).json()
    assert replaced["metadata"]["finalizers"] == ["example.com/d"]  # JSON merge patch replaces lists
    put = core.replace_namespaced_config_map("smp-fin", NS, {"metadata": {"name": "smp-fin",
                                                                         "finalizers": ["example.com/e"]}})
    assert put.metadata.finalizers == ["example.com/e"]  # so does an update
    raw(server, "PATCH", path, {"metadata": {"finalizers": None}}, MERGE)


def test_finalizers_are_a_set_in_server_side_apply(server, custom):
    def apply(manager, finalizers):
        body = gadget("ssa-fin")
        body["metadata"]["finalizers"] = finalizers
        return raw(server, "PATCH", f"/apis/{G}/{V}/namespaces/{NS}/{P}/ssa-fin", yaml.safe_dump(body), APPLY,
                   fieldManager=manager)

    assert apply("alice", ["example.com/a"]).status_code == 201
    bob = apply("bob", ["example.com/b"])
    assert bob.status_code == 200, bob.text  # different items of a set never conflict
    obj = bob.json()
    assert obj["metadata"]["finalizers"] == ["example.com/a", "example.com/b"]
    owned = {m["manager"]: m["fieldsV1"]["f:metadata"]["f:finalizers"] for m in obj["metadata"]["managedFields"]}
    assert owned["alice"] == {".": {}, 'v:"example.com/a"': {}} and owned["bob"] == {".": {}, 'v:"example.com/b"': {}}
    dropped = apply("alice", []).json()  # alice stops applying hers: removed, bob's stays
    assert dropped["metadata"]["finalizers"] == ["example.com/b"]
    custom.patch_namespaced_custom_object(G, V, NS, P, "ssa-fin", {"metadata": {"finalizers": None}})
