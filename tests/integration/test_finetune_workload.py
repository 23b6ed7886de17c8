"""The FineTune workload run the way a RayJob runs it: `python -m kubeforge_workloads.finetune` with
KUBEFORGE_CONTEXT, real Ray Train (local head started by the driver), real S3 protocol (moto server),
real MLflow (sqlite). One uninterrupted 2-worker LoRA run is shared by the result checks and the in-attempt worker
recovery comparison. (A run killed and resumed bit-exactly past a torn checkpoint is checked through the operator in
test_finetune_resilience.py.)
"""

from __future__ import annotations

import json

import pytest

from kubeforge.dev.processes import ray_train_workers
from tests.integration.conftest_workloads import BUCKET, WorkloadEnv, workload_env  # noqa: F401

pytestmark = pytest.mark.slow

MODULE = "kubeforge_workloads.finetune"
SEED = f"s3://{BUCKET}/seed"
STEPS, EVERY = 12, 4


def spec(**overrides) -> dict:
    base = {
        "baseModel": {"uri": f"{SEED}/models/tiny-llama"},
        "method": "lora",
        "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "targetModules": ["all-linear"]},
        "dataset": {"trainUri": f"{SEED}/datasets/kubeforge-docs-qa/train.jsonl",
                    "evalUri": f"{SEED}/datasets/kubeforge-docs-qa/eval.jsonl",
                    "format": "instruction", "promptTemplate": "### Question\n{instruction}\n### Answer\n",
                    "inputField": "instruction", "outputField": "response"},
        "training": {"maxSteps": STEPS, "batchSize": 4, "learningRate": 0.003, "lrScheduler": "cosine",
                     "warmupRatio": 0.1, "maxSeqLength": 96, "seed": 7, "checkpointEverySteps": EVERY},
        "resources": {"workers": 2, "cpusPerWorker": 1},
        "output": {"registeredModelName": "docs-assistant", "merge": True},
    }
    for key, value in overrides.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    from kubeforge.api.finetune import FineTuneSpec

    return FineTuneSpec.model_validate(base).model_dump(mode="json", by_alias=True, exclude_none=True)


def losses_by_step(env: WorkloadEnv, name: str) -> dict[int, float]:
    """Per-step training loss from MLflow; where an attempt repeated a step, the latest write wins."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env.tracking_uri)
    run = run_of(env, name)
    latest: dict[int, tuple[int, float]] = {}
    for metric in client.get_metric_history(run.info.run_id, "loss"):
        if metric.step not in latest or metric.timestamp >= latest[metric.step][0]:
            latest[metric.step] = (metric.timestamp, metric.value)
    return {step: value for step, (_, value) in sorted(latest.items())}


def run_of(env: WorkloadEnv, name: str):
    import mlflow

    mlflow.set_tracking_uri(env.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["ns/FineTune"], filter_string=f"tags.`kubeforge.uid` = 'uid-{name}'",
                              output_format="list")
    assert len(runs) == 1, f"expected one MLflow run for {name}, found {len(runs)}"
    return runs[0]


def tensors(env: WorkloadEnv, key: str) -> dict:
    from safetensors.torch import load

    return load(env.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def download(env: WorkloadEnv, prefix: str, target):
    target.mkdir(parents=True, exist_ok=True)
    for key in env.keys(prefix.rstrip("/") + "/"):
        path = target / key[len(prefix.rstrip("/")) + 1:]
        path.parent.mkdir(parents=True, exist_ok=True)
        env.s3.download_file(BUCKET, key, str(path))
    return target


def assert_ok(finished, what):
    assert finished.returncode == 0, f"{what} exited {finished.returncode}:\n{finished.stderr[-4000:]}"


@pytest.fixture(scope="module")
def uninterrupted(workload_env):
    finished = workload_env.run(MODULE, workload_env.context("straight", spec()))
    assert_ok(finished, "uninterrupted run")
    return finished


def test_lora_run_succeeds_and_registers(workload_env, uninterrupted, tmp_path):
    env = workload_env
    prefix = env.prefix("straight")
    result = env.get_json(f"{prefix}/outputs/result.json")
    assert result["evalLossAfter"] < result["evalLossBefore"], result
    assert result["steps"] == STEPS
    assert result["adapterUri"] == f"s3://{BUCKET}/{prefix}/outputs/adapter"
    assert result["mergedUri"] == f"s3://{BUCKET}/{prefix}/outputs/merged"
    assert result["registeredModelName"] == "docs-assistant" and result["registeredModelVersion"]
    assert result["mergedModelName"] == "docs-assistant-merged" and result["mergedModelVersion"]
    assert result["modelUri"] == f"models:/docs-assistant/{result['registeredModelVersion']}"

    progress = env.get_json(f"{prefix}/progress.json")
    assert progress["phase"] == "Done" and progress["step"] == STEPS and progress["attempt"] == 1
    assert progress["lastCheckpoint"].endswith(f"checkpoints/step-{STEPS}/")
    for field in ("totalSteps", "epoch", "loss", "throughput", "updatedAt", "evalLoss"):
        assert field in progress, field
    committed = sorted(int(k.split("step-")[1].split("/")[0]) for k in env.keys(f"{prefix}/checkpoints/")
                       if k.endswith("MANIFEST.json"))
    assert committed == [4, 8, 12]
    manifest = env.get_json(f"{prefix}/checkpoints/step-8/MANIFEST.json")
    # both workers' RNG states travel with the checkpoint, with optimizer, scheduler and trainer state
    for name in ("rng_state_0.pth", "rng_state_1.pth", "optimizer.pt", "scheduler.pt", "trainer_state.json",
                 "adapter_model.safetensors"):
        assert name in manifest["files"], name

    from mlflow.tracking import MlflowClient

    client = MlflowClient(env.tracking_uri)
    run = run_of(env, "straight")
    assert run.data.params["method"] == "lora" and run.data.params["lora_r"] == "8"
    assert run.data.tags["kubeforge.attempt"] == "1"
    assert sorted(losses_by_step(env, "straight")) == list(range(1, STEPS + 1))
    assert "eval_loss_before" in run.data.metrics and "eval_loss_after" in run.data.metrics
    version = client.get_model_version("docs-assistant", result["registeredModelVersion"])
    assert version.run_id == run.info.run_id

    # The registered adapter, loaded with transformers + peft, gives the logits the trained model gave.
    import mlflow
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    probe = env.get_json(f"{prefix}/outputs/probe.json")
    ids = torch.tensor([probe["inputIds"]])
    expected = torch.tensor(probe["logits"])
    base_dir = download(env, "seed/models/tiny-llama", tmp_path / "base")
    adapter_dir = mlflow.artifacts.download_artifacts(f"models:/docs-assistant/{result['registeredModelVersion']}",
                                                      dst_path=str(tmp_path / "registered"))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    assert torch.allclose(logits, expected, atol=1e-5, rtol=0), (logits - expected).abs().max()
    # the outputs/ adapter is the same bytes as the registered one
    registered = tensors_from_dir(adapter_dir)
    for key, value in tensors(env, f"{prefix}/outputs/adapter/adapter_model.safetensors").items():
        assert torch.equal(value, registered[key]), key
    # the merged model is a plain transformers model with the adapter folded in
    merged = AutoModelForCausalLM.from_pretrained(download(env, f"{prefix}/outputs/merged", tmp_path / "m")).eval()
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits[0]
    assert torch.allclose(merged_logits, expected, atol=1e-4, rtol=0), (merged_logits - expected).abs().max()


def tensors_from_dir(directory) -> dict:
    from pathlib import Path

    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "adapter_model.safetensors"))


def test_a_killed_ray_train_worker_is_recovered_inside_the_attempt(workload_env, uninterrupted):
    """SIGKILL of one Ray Train worker process after the first checkpoint: Ray Train restarts the worker group
    inside attempt 1 (FailureConfig), training resumes from the latest committed checkpoint, and the run ends with
    the uninterrupted run's losses and weights."""
    import os
    import signal

    env = workload_env
    name = "worker-killed"
    prefix = env.prefix(name)
    killed: list[int] = []

    def kill_one_worker_after_the_first_checkpoint(driver_pid: int) -> None:
        if killed or not env.keys(f"{prefix}/checkpoints/step-{EVERY}/MANIFEST.json"):
            return
        workers = ray_train_workers(driver_pid)
        if len(workers) == 2:
            victim = workers[-1]
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(victim.pid)

    finished = env.run(MODULE, env.context(name, spec()), extra_env={"KUBEFORGE_STEP_DELAY_SECONDS": "1.0"},
                       while_running=kill_one_worker_after_the_first_checkpoint, timeout=420)
    assert killed, "no Ray Train worker was killed: the run ended before its first checkpoint was seen"
    assert_ok(finished, "the run with a killed worker")  # one attempt, recovered inside it
    result = env.get_json(f"{prefix}/outputs/result.json")
    resumed_step = int(result["resumedFrom"].rstrip("/").rsplit("step-", 1)[1])
    assert resumed_step >= EVERY and result["resumedFrom"] == f"s3://{BUCKET}/{prefix}/checkpoints/step-{resumed_step}/"
    progress = env.get_json(f"{prefix}/progress.json")
    assert progress["attempt"] == 1 and progress["phase"] == "Done"
    assert "worker group restarted inside attempt 1" in progress["message"], progress
    assert env.keys(f"{prefix}/attempts/") == []  # no failure report: the attempt did not fail

    reference, recovered = losses_by_step(env, "straight"), losses_by_step(env, name)
    assert sorted(recovered) == list(range(1, STEPS + 1))
    assert recovered == reference  # exact equality, not a tolerance
    assert result["evalLossAfter"] == env.get_json(f"{env.prefix('straight')}/outputs/result.json")["evalLossAfter"]
    import torch

    final = tensors(env, f"{prefix}/outputs/adapter/adapter_model.safetensors")
    expected = tensors(env, f"{env.prefix('straight')}/outputs/adapter/adapter_model.safetensors")
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
    assert run_of(env, name).data.tags["kubeforge.attempt"] == "1"


def test_full_fine_tune(workload_env, uninterrupted):
    env = workload_env
    finished = env.run(MODULE, env.context("full", spec(
        method="full", training={"maxSteps": 4, "checkpointEverySteps": 4, "learningRate": 0.001},
        resources={"workers": 1}, output={"registeredModelName": "docs-full", "merge": False})))
    assert_ok(finished, "full fine-tune")
    result = env.get_json(f"{env.prefix('full')}/outputs/result.json")
    assert result["fullModelUri"].endswith("/outputs/model") and "adapterUri" not in result
    assert result["modelUri"] == f"models:/docs-full/{result['registeredModelVersion']}"
    assert env.keys(f"{env.prefix('full')}/outputs/model/model.safetensors")


def write_jsonl(env: WorkloadEnv, key: str, rows: list) -> str:
    body = "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)
    env.s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode())
    return f"s3://{BUCKET}/{key}"


@pytest.mark.parametrize("case", ["missing-key", "template-field", "missing-file"])
def test_user_errors_fail_fast_with_the_line(workload_env, case):
    env = workload_env
    good = {"instruction": "What is Kubeforge?", "response": "An operator."}
    dataset = {"evalUri": None}
    if case == "missing-key":
        dataset["trainUri"] = write_jsonl(env, "bad/missing-key.jsonl", [good, good, {"instruction": "no answer"}])
        expected_code, expected = 65, ["line 3", "'response'"]
    elif case == "template-field":
        dataset["trainUri"] = write_jsonl(env, "bad/template.jsonl", [good, good])
        dataset["promptTemplate"] = "Q: {question}\nA: "
        expected_code, expected = 65, ["line 1", "'question'"]
    else:
        dataset["trainUri"] = f"s3://{BUCKET}/bad/nothing-here.jsonl"
        expected_code, expected = 64, ["nothing-here.jsonl", "does not exist"]
    the_spec = spec(dataset=dataset)
    the_spec["dataset"].pop("evalUri", None)
    name = f"bad-{case}"
    finished = env.run(MODULE, env.context(name, the_spec), timeout=60)
    assert finished.returncode == expected_code, finished.stderr[-3000:]
    failure = env.get_json(f"{env.prefix(name)}/attempts/1/failure.json")
    assert failure["exitCode"] == expected_code and failure["reason"] == "UserError"
    for text in expected:
        assert text in failure["message"], failure["message"]
    last = [line for line in finished.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("kubeforge: UserError:") and expected[0] in last


def test_forced_node_check_failure_exits_69(workload_env):
    env = workload_env
    name = "nodecheck"
    finished = env.run(MODULE, env.context(name, spec(resources={"workers": 1})),
                       extra_env={"KUBEFORGE_FAIL_NODE_CHECK": "1"})
    assert finished.returncode == 69, finished.stderr[-3000:]
    failure = env.get_json(f"{env.prefix(name)}/attempts/1/failure.json")
    assert failure["reason"] == "NodeCheckFailed" and "KUBEFORGE_FAIL_NODE_CHECK" in failure["message"]
