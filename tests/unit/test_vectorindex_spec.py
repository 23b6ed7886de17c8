"""The VectorIndex spec: the issue's field names, defaults, and the overlap < size rule in the CRD (CEL, evaluated
with cel-python) and in the model the workload validates with."""

import celpy
import pytest
from pydantic import ValidationError

from kubeforge.api.vectorindex import VectorIndexSpec
from tests.conftest import REPO_ROOT
from tests.unit.schemas import crd_schema, schema_errors

CRD = REPO_ROOT / "crds" / "kubeforge.dev_vectorindexes.yaml"
MINIMAL = {"apiVersion": "kubeforge.dev/v1alpha1", "kind": "VectorIndex", "metadata": {"name": "docs"},
           "spec": {"source": {"uri": "s3://bucket/docs/"}}}


def _chunking_rules() -> list[dict]:
    return crd_schema(CRD, "v1alpha1")["properties"]["spec"]["properties"]["chunking"]["x-kubernetes-validations"]


def _cel_allows(rule: str, value: dict) -> bool:
    environment = celpy.Environment()
    return bool(environment.program(environment.compile(rule)).evaluate({"self": celpy.json_to_cel(value)}))


def test_minimal_vectorindex_is_valid_and_defaults_follow_the_issue():
    assert schema_errors(crd_schema(CRD, "v1alpha1"), MINIMAL) == []
    wire = VectorIndexSpec.model_validate(MINIMAL["spec"]).wire()
    assert wire["source"] == {"uri": "s3://bucket/docs/", "include": ["**"], "exclude": [],
                              "jsonl": {"textField": "text", "metadataFields": []}}
    assert wire["chunking"] == {"strategy": "tokens", "size": 200, "overlap": 20}
    assert wire["embedding"] == {"model": "all-MiniLM-L6-v2", "batchSize": 64, "normalize": True, "device": "auto"}
    assert wire["index"] == {"metric": "cosine", "type": "hnsw", "minRecall": 0.95,
                             "hnsw": {"m": 32, "efConstruction": 200, "efSearch": 128}}
    assert wire["sync"] == {} and wire["syncGeneration"] == 0 and wire["keepVersions"] == 3
    for shared in ("resources", "ray", "failurePolicy", "storage", "mlflow", "deletionPolicy"):
        assert shared in wire


@pytest.mark.parametrize("chunking,allowed", [
    ({"size": 200, "overlap": 20}, True),
    ({"size": 200, "overlap": 199}, True),
    ({"size": 200, "overlap": 200}, False),
    ({"size": 100, "overlap": 150}, False),
])
def test_overlap_must_be_smaller_than_size_in_the_crd_and_the_model(chunking, allowed):
    (rule,) = _chunking_rules()
    assert _cel_allows(rule["rule"], chunking) is allowed
    assert rule["message"] == "chunking.overlap must be smaller than chunking.size"
    if allowed:
        VectorIndexSpec.model_validate({"source": {"uri": "s3://b/d/"}, "chunking": chunking})
    else:
        with pytest.raises(ValidationError, match="chunking.overlap must be smaller than chunking.size"):
            VectorIndexSpec.model_validate({"source": {"uri": "s3://b/d/"}, "chunking": chunking})


@pytest.mark.parametrize("path,value,fragment", [
    (("source", "uri"), "file:///docs", "does not match"),
    (("chunking", "strategy"), "paragraphs", "is not one of"),
    (("embedding", "device"), "tpu", "is not one of"),
    (("index", "metric"), "hamming", "is not one of"),
    (("index", "type"), "ivf", "is not one of"),
    (("index", "minRecall"), 1.5, "greater than the maximum"),
    (("sync", "interval"), "soon", "does not match"),
    (("keepVersions",), 0, "less than the minimum"),
])
def test_schema_rejects_bad_values(path, value, fragment):
    spec = {"source": {"uri": "s3://bucket/docs/"}}
    target = spec
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    errors = schema_errors(crd_schema(CRD, "v1alpha1"), {**MINIMAL, "spec": spec})
    assert any(fragment in error for error in errors), errors
