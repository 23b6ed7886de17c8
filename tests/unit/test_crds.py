"""CRDs are generated from the models, fresh, valid apiextensions/v1, and carry the ecosystem metadata."""

import copy

import kubernetes_validate
import pytest
import yaml

from kubeforge.api import KINDS
from kubeforge.api.crdgen import crd_for, stale_files
from tests.conftest import REPO_ROOT
from tests.unit.schemas import crd_schema, schema_errors

CRD_DIR = REPO_ROOT / "crds"


def test_committed_crds_are_not_stale():
    stale = stale_files(CRD_DIR)
    assert stale == [], f"regenerate with `kubeforge crds generate`: {stale}"


@pytest.mark.parametrize("info", KINDS, ids=lambda i: i.kind)
def test_crd_is_valid_apiextensions_v1(info):
    kubernetes_validate.validate(crd_for(info), "1.32.0", strict=True)


@pytest.mark.parametrize("info", KINDS, ids=lambda i: i.kind)
def test_crd_names_columns_and_status_subresource(info):
    crd = crd_for(info)
    names = crd["spec"]["names"]
    assert names["shortNames"] == [info.short_name]
    assert "genai" in names["categories"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[0] == "Phase" and columns[-1] == "Age"
    assert ("Restarts" in columns) == (info.shape == "RayJob")  # a RayService has no attempts to restart


def _walk(schema, path=""):
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


@pytest.mark.parametrize("info", KINDS, ids=lambda i: i.kind)
def test_schema_is_structural(info):
    spec = crd_for(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(spec):
        assert "$ref" not in node and "anyOf" not in node and "allOf" not in node, path
        assert node.get("additionalProperties") is not False, path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields") or node.get(
            "x-kubernetes-int-or-string"), f"{path} has no type"


def _spec_schema(info) -> dict:
    return crd_for(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


@pytest.mark.parametrize("info", KINDS, ids=lambda i: i.kind)
def test_every_spec_field_has_a_description_for_kubectl_explain(info):
    missing = [path for path, node in _walk(_spec_schema(info))
               if path and not node.get("description")
               and not (path.endswith("[]") and node.get("type") != "object")]  # items of a list of scalars
    assert missing == [], f"{info.kind} spec fields without a description (add an attribute docstring): {missing}"


@pytest.mark.parametrize("info", KINDS, ids=lambda i: i.kind)
def test_descriptions_name_the_scalar_default(info):
    unnamed = [path for path, node in _walk(_spec_schema(info))
               if "default" in node and not isinstance(node["default"], (dict, list))
               and "Default: " not in node.get("description", "")]
    assert unnamed == [], f"{info.kind}: defaults kubectl explain would not show: {unnamed}"


def test_finetune_training_fields_say_what_they_do_and_their_unit():
    training = _spec_schema(KINDS[1])["properties"]["training"]["properties"]
    assert "learning rate" in training["learningRate"]["description"].lower()
    assert "Default: 0.0002." in training["learningRate"]["description"]
    assert "passes over the training data" in training["epochs"]["description"].lower()
    assert "tokens" in training["maxSeqLength"]["description"]
    assert "seed" in training["seed"]["description"].lower() and "Default: 42." in training["seed"]["description"]
    assert "Default: fp32." in training["precision"]["description"]
    assert "optimizer steps" in training["checkpointEverySteps"]["description"]
    assert "Retries after the first attempt" in \
        _spec_schema(KINDS[1])["properties"]["failurePolicy"]["properties"]["maxRestarts"]["description"]


FINETUNE = {
    "apiVersion": "kubeforge.dev/v1alpha1", "kind": "FineTune", "metadata": {"name": "x"},
    "spec": {"baseModel": {"uri": "s3://b/m"}, "dataset": {"trainUri": "s3://b/t.jsonl"},
             "output": {"registeredModelName": "m"}},
}


def _finetune_schema():
    return crd_schema(CRD_DIR / "kubeforge.dev_finetunes.yaml", "v1alpha1")


def test_minimal_finetune_is_valid():
    assert schema_errors(_finetune_schema(), FINETUNE) == []


@pytest.mark.parametrize("path,value,fragment", [
    (("spec", "method"), "dora", "is not one of"),
    (("spec", "failurePolicy"), {"maxRestarts": -1}, "less than the minimum"),
    (("spec", "baseModel", "uri"), "ftp://nope", "does not match"),
    (("spec", "training"), {"learningRate": 0}, "less than or equal to the minimum"),
])
def test_schema_rejects_bad_values(path, value, fragment):
    obj = copy.deepcopy(FINETUNE)
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    errors = schema_errors(_finetune_schema(), obj)
    assert any(fragment in e for e in errors), errors


def test_schema_requires_dataset():
    obj = copy.deepcopy(FINETUNE)
    del obj["spec"]["dataset"]
    assert any("'dataset' is a required property" in e for e in schema_errors(_finetune_schema(), obj))


def test_cel_rule_for_qlora_is_in_the_crd():
    spec = _finetune_schema()["properties"]["spec"]
    rules = [v["rule"] for v in spec["x-kubernetes-validations"]]
    assert any("qlora" in r and "gpusPerWorker" in r for r in rules)


def test_examples_validate_against_their_crds():
    checked = 0
    for path in sorted((REPO_ROOT / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("apiVersion") != "kubeforge.dev/v1alpha1":
                continue
            info = next(i for i in KINDS if i.kind == doc["kind"])
            schema = crd_schema(CRD_DIR / f"kubeforge.dev_{info.plural}.yaml", "v1alpha1")
            assert schema_errors(schema, doc) == [], path
            info.spec_model.model_validate(doc["spec"])
            checked += 1
    assert checked >= 14
