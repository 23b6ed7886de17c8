"""Seed artifacts are deterministic and valid training data; models load from models:/ (MLflow registry) URIs, and
the loader's messages name the field its caller passes."""

import hashlib
import json

import pytest

from kubeforge.api.finetune import DatasetSpec
from kubeforge_workloads.common.errors import UserError
from kubeforge_workloads.finetune.data import read_examples
from kubeforge_workloads.seed.build import build_tiny_llama, instruction_rows, write_datasets


@pytest.fixture(autouse=True)
def restore_mlflow_tracking_uri():
    """These tests point MLflow at a temporary sqlite store; leave the process-wide setting as found."""
    from mlflow.tracking._tracking_service import utils

    saved = utils._tracking_uri
    yield
    utils._tracking_uri = saved


def digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_tiny_llama_is_built_byte_for_byte_the_same(tmp_path):
    first, second = build_tiny_llama(tmp_path / "a"), build_tiny_llama(tmp_path / "b")
    assert digests(first) == digests(second)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(digests(first))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(first)
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "</s>" and tokenizer.chat_template
    config = json.loads((first / "config.json").read_text())
    assert config["model_type"] == "llama" and config["vocab_size"] == len(tokenizer)


def test_seed_datasets_are_valid_instruction_data(tmp_path):
    train_path, eval_path = write_datasets(tmp_path)
    spec = DatasetSpec(train_uri="s3://b/t.jsonl", prompt_template="### Question\n{instruction}\n### Answer\n")
    train, evaluation = read_examples(train_path, spec, "train"), read_examples(eval_path, spec, "eval")
    assert len(train) >= 150 and len(evaluation) >= 40
    assert not {e.prompt for e in train} & {e.prompt for e in evaluation}  # held-out phrasings
    assert instruction_rows() == instruction_rows()


def test_base_model_from_the_mlflow_registry(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from kubeforge_workloads.common.models import load_model_dir

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    model_dir = tmp_path / "hf"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"model_type": "llama"}')
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
    client = MlflowClient()
    client.create_registered_model("base")
    client.create_model_version("base", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    path = load_model_dir("models:/base/1", tmp_path / "cache", store=None)
    assert json.loads((path / "config.json").read_text()) == {"model_type": "llama"}
    with pytest.raises(UserError, match="^spec.model.uri models:/empty/1 .*no config.json"):
        client.create_registered_model("empty")
        with mlflow.start_run(experiment_id=experiment) as other:
            mlflow.log_text("x", "model/README.md")
        client.create_model_version("empty", source=f"{other.info.artifact_uri}/model", run_id=other.info.run_id)
        load_model_dir("models:/empty/1", tmp_path / "cache2", store=None, field="spec.model.uri")


def test_unknown_registered_base_model_is_a_user_error_naming_finetunes_field(tmp_path):
    import mlflow

    from kubeforge_workloads.finetune.model import load_base_model_dir

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(UserError, match="^spec.baseModel.uri models:/nothing/3: no such registered model version"):
        load_base_model_dir("models:/nothing/3", tmp_path / "cache", store=None)
