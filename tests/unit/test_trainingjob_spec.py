"""The TrainingJob spec: issue 11's field names and defaults; what the CRD refuses (enums, bounds, CEL rules
evaluated with cel-python) the model the workload validates with refuses too, with the same message."""

from __future__ import annotations

import copy
import re

import celpy
import pytest
from pydantic import ValidationError

from kubeforge.api.trainingjob import TrainingJobSpec
from tests.conftest import REPO_ROOT
from tests.unit.schemas import crd_schema, schema_errors

CRD = REPO_ROOT / "crds" / "kubeforge.dev_trainingjobs.yaml"
MINIMAL = {"apiVersion": "kubeforge.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "tiny"},
           "spec": {"model": {"config": {"model_type": "llama", "hidden_size": 64}},
                    "tokenizer": {"uri": "s3://kubeforge/seed/models/tiny-llama"},
                    "dataset": {"uri": "s3://kubeforge/data/train.jsonl"}, "training": {"maxSteps": 10}}}


def schema() -> dict:
    return crd_schema(CRD, "v1alpha1")


def rules(*path: str) -> list[dict]:
    node = schema()["properties"]["spec"]
    for key in path:
        node = node["properties"][key]
    return node["x-kubernetes-validations"]


def cel_allows(rule: str, value: dict) -> bool:
    environment = celpy.Environment()
    return bool(environment.program(environment.compile(rule)).evaluate({"self": celpy.json_to_cel(value)}))


def with_spec(**changes) -> dict:
    obj = copy.deepcopy(MINIMAL)
    for key, value in changes.items():
        if value is None:
            obj["spec"].pop(key, None)
        else:
            obj["spec"][key] = value
    return obj


def test_minimal_trainingjob_is_valid_and_defaults_follow_the_issue():
    assert schema_errors(schema(), MINIMAL) == []
    spec = TrainingJobSpec.model_validate(MINIMAL["spec"])
    assert spec.dataset.format.value == "jsonl-text" and spec.dataset.text_field == "text"
    assert spec.parallelism.strategy.value == "ddp" and spec.parallelism.fsdp_sharding_strategy.value == "FULL_SHARD"
    t = spec.training
    assert (t.global_batch_size, t.micro_batch_size, t.gradient_clipping, t.keep_checkpoints) == (8, 1, 1.0, 3)
    assert spec.ema is None and spec.precompute is None


@pytest.mark.parametrize("path,value,fragment", [
    (("ema",), {"decay": 1.0}, "greater than or equal to the maximum"),
    (("ema",), {"decay": 0}, "less than or equal to the minimum"),
    (("ema",), {"decay": 0.99, "startFraction": 1.5}, "greater than the maximum"),
    (("parallelism",), {"strategy": "zero3"}, "is not one of"),
    (("parallelism",), {"strategy": "fsdp", "fsdpShardingStrategy": "HYBRID_SHARD"}, "is not one of"),
    (("dataset",), {"uri": "s3://b/d", "format": "csv"}, "is not one of"),
    (("training",), {"maxSteps": 10, "globalBatchSize": 0}, "less than the minimum"),
])
def test_schema_refuses_bad_values(path, value, fragment):
    errors = schema_errors(schema(), with_spec(**{path[0]: value}))
    assert any(fragment in e for e in errors), errors


@pytest.mark.parametrize("spec_changes,allowed,message", [
    ({}, True, None),
    ({"training": {"maxSteps": 10, "globalBatchSize": 6, "microBatchSize": 2},
      "resources": {"workers": 2}}, False, "training.globalBatchSize must be divisible by resources.workers x "
                                           "training.microBatchSize"),
    ({"training": {"maxSteps": 10, "globalBatchSize": 8, "microBatchSize": 2},
      "resources": {"workers": 2}}, True, None),
    ({"training": {"maxSteps": 10, "globalBatchSize": 9}, "resources": {"workers": 2}}, False,
     "training.globalBatchSize must be divisible"),
    ({"tokenizer": None}, False, "set tokenizer.uri: a model built from model.config has no tokenizer of its own"),
    ({"tokenizer": None, "model": {"uri": "models:/tiny/1"}}, True, None),
])
def test_spec_rules_in_the_crd_and_the_model(spec_changes, allowed, message):
    obj = with_spec(**spec_changes)
    verdicts = [(cel_allows(rule["rule"], obj["spec"]), rule["message"]) for rule in rules()
                if "oldSelf" not in rule["rule"]]
    assert all(ok for ok, _ in verdicts) is allowed, verdicts
    if allowed:
        TrainingJobSpec.model_validate(obj["spec"])
    else:
        assert message in [m for ok, m in verdicts if not ok][0]
        with pytest.raises(ValidationError, match=re.escape(message)):
            TrainingJobSpec.model_validate(obj["spec"])


def diffusion(**changes) -> dict:
    spec = {"task": "diffusion",
            "model": {"unet": {"config": {"sample_size": 8}}, "vae": {"config": {"latent_channels": 4}},
                      "textEncoder": {"uri": "s3://kubeforge/seed/models/tiny-clip"},
                      "tokenizer": {"uri": "s3://kubeforge/seed/models/tiny-clip"}},
            "dataset": {"uri": "s3://kubeforge/seed/datasets/shapes/", "format": "webdataset"},
            "phases": [{"resolution": 32, "steps": 4}, {"resolution": 64, "steps": 4, "microBatchSize": 2}],
            "training": {"globalBatchSize": 4}}
    spec.update(changes)
    return {"tokenizer": None, **spec}


@pytest.mark.parametrize("spec_changes,allowed,message", [
    ({"model": {"config": {"model_type": "llama"}, "uri": "models:/m/1"}}, False,
     "set exactly one of model.config or model.uri"),
    ({"model": {}}, False, "set exactly one of model.config or model.uri"),
    ({"training": {"maxSteps": 10, "epochs": 1}}, False, "set exactly one of training.maxSteps or training.epochs"),
    ({"training": {}}, False, "set exactly one of training.maxSteps or training.epochs"),
    (diffusion(), True, None),
    (diffusion(training={"globalBatchSize": 5}), False,
     "training.globalBatchSize must be divisible by resources.workers x phases[].microBatchSize"),
    (diffusion(phases=[]), False, "task: diffusion needs phases"),
    (diffusion(phases=None), False, "task: diffusion needs phases"),
    (diffusion(training={"maxSteps": 10}), False, "task: diffusion counts its steps in phases[].steps"),
    (diffusion(model={"config": {"model_type": "llama"}}), False,
     "task: diffusion needs model.unet, model.vae, model.textEncoder and model.tokenizer"),
    (diffusion(dataset={"uri": "s3://b/d.jsonl"}), False, "dataset.format: task diffusion reads webdataset"),
    (diffusion(lowPrecisionNorms=True), False, "lowPrecisionNorms runs LayerNorm and GroupNorm"),
    (diffusion(lowPrecisionNorms=True, resources={"gpusPerWorker": 1}), True, None),
    ({"dataset": {"uri": "s3://b/d", "format": "parquet"}}, False, "dataset.format: task diffusion reads"),
    ({"phases": [{"resolution": 32, "steps": 4}]}, False, "are for task: diffusion"),
])
def test_task_rules_in_the_crd_and_the_model(spec_changes, allowed, message):
    test_spec_rules_in_the_crd_and_the_model(spec_changes, allowed, message)


def test_diffusion_spec_counts_its_steps_in_phases_and_components_take_one_source():
    spec = TrainingJobSpec.model_validate({k: v for k, v in diffusion().items() if v is not None})
    assert spec.diffusion and spec.total_steps == 8
    assert spec.model.noise_scheduler is None and spec.precompute is None and spec.samples.count == 4
    assert schema_errors(schema(), {**MINIMAL, "spec": {k: v for k, v in diffusion().items() if v is not None}}) == []
    (rule,) = schema()["properties"]["spec"]["properties"]["model"]["properties"]["vae"]["x-kubernetes-validations"]
    assert not cel_allows(rule["rule"], {}) and rule["message"] == "set exactly one of config or uri"
    with pytest.raises(ValidationError, match="set exactly one of config or uri"):
        TrainingJobSpec.model_validate({k: v for k, v in diffusion(model={**diffusion()["model"], "vae": {}}).items()
                                        if v is not None})
