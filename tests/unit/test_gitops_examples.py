"""examples/gitops: the Argo CD Application and the Flux GitRepository + Kustomization parse, validate against
their CRDs' schemas (tests/fixtures/gitops-crds, each with its source commit), deploy the pipeline folder, and
wait for health."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.unit.schemas import crd_schema, schema_errors

REPO = Path(__file__).resolve().parents[2]
GITOPS = REPO / "examples" / "gitops"
PIPELINE = "examples/pipeline"
CRDS = REPO / "tests" / "fixtures" / "gitops-crds"
SCHEMAS = {
    ("argoproj.io/v1alpha1", "Application"): (CRDS / "argoproj.io_applications.yaml", "v1alpha1"),
    ("source.toolkit.fluxcd.io/v1", "GitRepository"): (CRDS / "source.toolkit.fluxcd.io_gitrepositories.yaml", "v1"),
    ("kustomize.toolkit.fluxcd.io/v1", "Kustomization"): (CRDS / "kustomize.toolkit.fluxcd.io_kustomizations.yaml",
                                                          "v1"),
}


def manifests() -> list[dict]:
    return [doc for path in sorted(GITOPS.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(kind: str) -> dict:
    (found,) = [doc for doc in manifests() if doc["kind"] == kind]
    return found


def test_every_manifest_is_an_argo_cd_or_flux_object_valid_for_its_crd():
    docs = manifests()
    assert sorted(doc["kind"] for doc in docs) == ["Application", "GitRepository", "Kustomization"]
    for doc in docs:
        path, version = SCHEMAS[(doc["apiVersion"], doc["kind"])]
        crd = yaml.safe_load(path.read_text())
        assert f"{crd['spec']['group']}/{version}" == doc["apiVersion"] and crd["spec"]["names"]["kind"] == doc["kind"]
        assert schema_errors(crd_schema(path, version), doc) == [], doc["kind"]


def test_the_schemas_refuse_a_missing_required_field_and_a_wrong_type():
    kustomization, application = one("Kustomization"), one("Application")
    del kustomization["spec"]["sourceRef"]
    kustomization["spec"]["wait"] = "yes"
    path, version = SCHEMAS[("kustomize.toolkit.fluxcd.io/v1", "Kustomization")]
    errors = schema_errors(crd_schema(path, version), kustomization)
    assert any("'sourceRef' is a required property" in e for e in errors)
    assert any(e.startswith("spec.wait") for e in errors)
    del application["spec"]["destination"]
    path, version = SCHEMAS[("argoproj.io/v1alpha1", "Application")]
    errors = schema_errors(crd_schema(path, version), application)
    assert any("'destination' is a required property" in e for e in errors)


def test_both_deploy_the_pipeline_folder_and_wait_for_its_health():
    application, kustomization, repository = one("Application"), one("Kustomization"), one("GitRepository")
    assert application["spec"]["source"]["path"] == PIPELINE
    assert kustomization["spec"]["path"] == f"./{PIPELINE}"
    assert kustomization["spec"]["sourceRef"] == {"kind": "GitRepository", "name": repository["metadata"]["name"]}
    assert kustomization["metadata"]["namespace"] == repository["metadata"]["namespace"]
    assert kustomization["spec"]["wait"] is True and kustomization["spec"]["prune"] is True
    assert application["spec"]["source"]["repoURL"] == repository["spec"]["url"]
    assert application["spec"]["destination"]["namespace"] == kustomization["spec"]["targetNamespace"]


def test_the_pipeline_folder_holds_kubeforge_objects_the_tools_place_in_their_namespace():
    folder = REPO / PIPELINE
    assert folder.is_dir(), f"{PIPELINE}/ is missing: examples/gitops deploys it"
    docs = [doc for path in sorted(folder.glob("*.y*ml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert {doc["kind"] for doc in docs if doc["apiVersion"].startswith("kubeforge.dev/")} >= {
        "VectorIndex", "FineTune", "ServingEndpoint", "EvalRun"}
    # targetNamespace / destination.namespace place them: a namespace in the files would fight it
    assert all("namespace" not in doc["metadata"] for doc in docs)
