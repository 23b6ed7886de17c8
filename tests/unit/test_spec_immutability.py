"""One-shot kinds refuse spec changes after creation (except the fields only the operator reads); the CEL transition
rule in the generated CRD is evaluated here with cel-python on old and new specs."""

import copy

import celpy
import pytest

from kubeforge.api import KINDS
from kubeforge.api.crdgen import crd_for
from kubeforge.api.kinds import SPEC_FIELDS_MUTABLE_AFTER_CREATION, kind_info

SPEC = {
    "baseModel": {"uri": "s3://b/m"}, "method": "lora", "lora": {"r": 8},
    "dataset": {"trainUri": "s3://b/t.jsonl"}, "training": {"epochs": 1, "learningRate": 0.0002},
    "output": {"registeredModelName": "m"}, "resources": {"workers": 1}, "ray": {}, "storage": {}, "mlflow": {},
    "failurePolicy": {"maxRestarts": 3, "backoff": {"initialSeconds": 10, "maxSeconds": 300}, "hangTimeout": "10m",
                      "rules": []},
    "deletionPolicy": "Retain",
}


def _transition_rules(info) -> list[dict]:
    spec = crd_for(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return [r for r in spec.get("x-kubernetes-validations", []) if "oldSelf" in r["rule"]]


def _allowed(info, old: dict, new: dict) -> bool:
    (rule,) = _transition_rules(info)
    program = celpy.Environment().program(celpy.Environment().compile(rule["rule"]))
    result = program.evaluate({"self": celpy.json_to_cel(new), "oldSelf": celpy.json_to_cel(old)})
    assert not isinstance(result, Exception), result
    return bool(result)


def _changed(path: tuple, value) -> dict:
    new = copy.deepcopy(SPEC)
    target = new
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return new


@pytest.mark.parametrize("path,value", [
    (("training", "epochs"), 3),
    (("training", "learningRate"), 0.001),
    (("baseModel", "uri"), "s3://b/other"),
    (("method",), "full"),
    (("lora", "r"), 16),
    (("dataset", "evalUri"), "s3://b/e.jsonl"),
    (("output", "registeredModelName"), "other"),
    (("resources", "workers"), 2),
    (("ray", "image"), "other:1"),
    (("storage", "prefix"), "elsewhere"),
    (("mlflow", "experiment"), "other"),
])
def test_finetune_refuses_changes_that_shape_the_workload(path, value):
    assert not _allowed(kind_info("FineTune"), SPEC, _changed(path, value))


@pytest.mark.parametrize("path,value", [
    (("failurePolicy", "maxRestarts"), 10),
    (("failurePolicy", "backoff"), {"initialSeconds": 1, "maxSeconds": 5}),
    (("failurePolicy", "hangTimeout"), "30m"),
    (("failurePolicy", "startTimeout"), "1h"),
    (("failurePolicy", "rules"), [{"onExitCodes": [3], "action": "Ignore"}]),
    (("deletionPolicy",), "Delete"),
])
def test_finetune_accepts_changes_to_what_only_the_operator_reads(path, value):
    assert _allowed(kind_info("FineTune"), SPEC, _changed(path, value))


def test_an_unchanged_spec_and_a_removed_optional_field_are_judged_by_presence():
    info = kind_info("FineTune")
    assert _allowed(info, SPEC, copy.deepcopy(SPEC))
    without_storage = copy.deepcopy(SPEC)
    del without_storage["storage"]
    assert not _allowed(info, SPEC, without_storage)
    assert not _allowed(info, without_storage, SPEC)


@pytest.mark.parametrize("info", KINDS, ids=lambda i: i.kind)
def test_one_shot_kinds_are_immutable_and_long_running_kinds_reconcile_changes(info):
    rules = _transition_rules(info)
    if info.kind in ("FineTune", "TrainingJob", "EvalRun"):
        exempt = ("failurePolicy, deletionPolicy and resources" if info.kind == "TrainingJob"
                  else "failurePolicy and deletionPolicy")
        assert [r["message"] for r in rules] == [
            f"spec is immutable once created, except {exempt}: delete and re-create the {info.kind} to change it"]
        fields = {f.alias for f in info.spec_model.model_fields.values()}
        mutable = set(SPEC_FIELDS_MUTABLE_AFTER_CREATION) | ({"resources"} if info.kind == "TrainingJob" else set())
        assert set(info.mutable_after_creation) == mutable
        for name in fields - mutable:
            assert f"self.{name} == oldSelf.{name}" in rules[0]["rule"], name
        for name in mutable:
            assert f"self.{name}" not in rules[0]["rule"]
    else:
        assert rules == []
