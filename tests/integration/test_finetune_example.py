"""Issue 4's first acceptance check, on the shipped example as a user applies it: `examples/finetune-lora.yaml`
(LoRA r=8 on all linear layers, 3 epochs, merged) reaches Succeeded in the sandbox; eval loss drops; the MLflow
run holds params, per-step metrics and the registered models; the registered adapter, loaded with
transformers + peft, gives the logits the trained model gave."""

from __future__ import annotations

import json

import pytest
import yaml

from kubeforge.dev.sandbox import BUCKET
from kubeforge.storage.layout import ResourcePrefix
from kubeforge.storage.objectstore import S3ObjectStore
from kubeforge_workloads.common.storage import download_uri
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

EXAMPLE = REPO_ROOT / "examples" / "finetune-lora.yaml"


def test_the_lora_example_fine_tunes_registers_and_reloads(sandbox, tmp_path, monkeypatch):
    example = yaml.safe_load(EXAMPLE.read_text())
    name = example["metadata"]["name"]
    sandbox.kubectl("apply", "-f", str(EXAMPLE))
    sandbox.kubectl("wait", "--for=condition=Ready", f"finetune/{name}", "--timeout=900s", timeout=960)
    status = sandbox.get("finetune", name)["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    output = status["output"]
    assert output["evalLossAfter"] < output["evalLossBefore"]

    for key, value in sandbox.env.items():
        if key.startswith(("AWS_", "MLFLOW_")):
            monkeypatch.setenv(key, value)
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    client = MlflowClient(sandbox.state.mlflow_url)
    run = client.get_run(output["mlflowRunId"])
    assert run.data.params["method"] == "lora" and run.data.params["lora_r"] == "8"
    steps = status["progress"]["totalSteps"]
    assert steps == status["progress"]["step"] > 0
    assert sorted({m.step for m in client.get_metric_history(run.info.run_id, "loss")}) == list(range(1, steps + 1))
    assert client.get_metric_history(run.info.run_id, "eval_loss")  # evalEverySteps: 20
    adapter = client.get_model_version(output["registeredModelName"], output["registeredModelVersion"])
    merged = client.get_model_version(output["mergedModelName"], output["mergedModelVersion"])
    assert adapter.run_id == merged.run_id == run.info.run_id
    assert output["modelUri"] == f"models:/{name}/{output['registeredModelVersion']}"

    s3 = sandbox.s3()
    outputs = ResourcePrefix.for_resource(BUCKET, "default", "FineTune", name)
    probe = json.loads(s3.get_object(Bucket=BUCKET, Key=outputs.output_key("probe.json"))["Body"].read())
    ids, expected = torch.tensor([probe["inputIds"]]), torch.tensor(probe["logits"])
    mlflow.set_tracking_uri(sandbox.state.mlflow_url)
    adapter_dir = mlflow.artifacts.download_artifacts(output["modelUri"], dst_path=str(tmp_path / "adapter"))
    base = AutoModelForCausalLM.from_pretrained(download_uri(S3ObjectStore(s3), example["spec"]["baseModel"]["uri"],
                                                             tmp_path / "base"))
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    assert torch.allclose(logits, expected, atol=1e-5, rtol=0), (logits - expected).abs().max()

    merged_dir = mlflow.artifacts.download_artifacts(f"models:/{output['mergedModelName']}/{output['mergedModelVersion']}",
                                                     dst_path=str(tmp_path / "merged"))
    with torch.no_grad():
        merged_logits = AutoModelForCausalLM.from_pretrained(merged_dir).eval()(input_ids=ids).logits[0]
    assert torch.allclose(merged_logits, expected, atol=1e-4, rtol=0), (merged_logits - expected).abs().max()
