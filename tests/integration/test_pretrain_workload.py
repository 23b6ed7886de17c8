"""The TrainingJob workload run the way a RayJob runs it: `python -m kubeforge_workloads.pretrain` with
KUBEFORGE_CONTEXT, real Ray Train with 2 CPU workers (gloo), real S3 protocol (moto server), real MLflow (sqlite).
FSDP SHARD_GRAD_OP checkpoints are sharded (one file set per rank) and a run killed after a checkpoint resumes in
its next attempt to the uninterrupted run's losses, final weights and EMA weights (compared with ==); DDP keeps
only the last keepCheckpoints checkpoints in the object store. (Resuming on one worker instead of two is checked
through the operator in test_trainingjob_resilience.py.)"""

from __future__ import annotations

import pytest

from tests.integration.conftest_workloads import BUCKET, EXPERIMENT, NAMESPACE, WorkloadEnv, workload_env  # noqa: F401

pytestmark = pytest.mark.slow

MODULE = "kubeforge_workloads.pretrain"
STEPS, EVERY = 8, 2


def spec(**overrides) -> dict:
    base = {
        "model": {"config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4}},
        "tokenizer": {"uri": f"s3://{BUCKET}/seed/models/tiny-llama"},
        "dataset": {"uri": f"s3://{BUCKET}/seed/datasets/kubeforge-docs-qa/train.jsonl", "textField": "response"},
        "training": {"maxSteps": STEPS, "globalBatchSize": 4, "microBatchSize": 1, "sequenceLength": 32,
                     "learningRate": 0.01, "warmupSteps": 2, "checkpointEverySteps": EVERY, "keepCheckpoints": 2,
                     "seed": 11},
        "parallelism": {"strategy": "fsdp", "fsdpShardingStrategy": "SHARD_GRAD_OP"},
        "ema": {"decay": 0.9, "startFraction": 0.5},
        "resources": {"workers": 2, "cpusPerWorker": 1},
        "output": {"registeredModelName": "tiny-pretrained"},
    }
    base.update(overrides)
    from kubeforge.api.trainingjob import TrainingJobSpec

    return TrainingJobSpec.model_validate(base).model_dump(mode="json", by_alias=True, exclude_none=True)


def prefix(name: str) -> str:
    return f"{NAMESPACE}/TrainingJob/{name}"


def context(name: str, the_spec: dict, attempt: int = 1) -> dict:
    return {"kind": "TrainingJob", "namespace": NAMESPACE, "name": name, "uid": f"uid-{name}", "generation": 1,
            "attempt": attempt, "spec": the_spec, "storage": {"bucket": BUCKET, "prefix": prefix(name)},
            "mlflow": {"experiment": EXPERIMENT, "run_name": name, "tracking_uri": None}}


def assert_ok(finished, what):
    assert finished.returncode == 0, f"{what} exited {finished.returncode}:\n{finished.stderr[-4000:]}"


def losses(env: WorkloadEnv, run_id: str) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    latest: dict[int, tuple[int, float]] = {}
    for metric in MlflowClient(env.tracking_uri).get_metric_history(run_id, "loss"):
        if metric.step not in latest or metric.timestamp >= latest[metric.step][0]:
            latest[metric.step] = (metric.timestamp, metric.value)
    return {step: value for step, (_, value) in sorted(latest.items())}


def weights(env: WorkloadEnv, key: str) -> dict:
    from safetensors.torch import load

    return load(env.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def committed(env: WorkloadEnv, name: str) -> list[int]:
    return sorted(int(k.split("step-")[1].split("/")[0]) for k in env.keys(f"{prefix(name)}/checkpoints/")
                  if k.endswith("MANIFEST.json"))


def chunks_per_parameter(env: WorkloadEnv, name: str, step: int) -> set[int]:
    """How many pieces each model parameter was saved in, from the checkpoint's DCP metadata (1 under DDP)."""
    import torch.distributed.checkpoint as dcp

    directory = env.tmp / f"{name}-metadata-{step}"
    directory.mkdir(exist_ok=True)
    env.s3.download_file(BUCKET, f"{prefix(name)}/checkpoints/step-{step}/.metadata", str(directory / ".metadata"))
    metadata = dcp.FileSystemReader(str(directory)).read_metadata()
    return {len(item.chunks) for key, item in metadata.state_dict_metadata.items()
            if key.startswith("model.") and hasattr(item, "chunks")}


def test_fsdp_shard_grad_op_is_sharded_and_resumes_bit_exactly(workload_env):
    env = workload_env
    straight = env.run(MODULE, context("fsdp-straight", spec()), timeout=420)
    assert_ok(straight, "uninterrupted FSDP run")
    result = env.get_json(f"{prefix('fsdp-straight')}/outputs/result.json")
    reference = losses(env, result["mlflowRunId"])
    assert sorted(reference) == list(range(1, STEPS + 1)) and reference[STEPS] < reference[1]
    manifest = env.get_json(f"{prefix('fsdp-straight')}/checkpoints/step-{STEPS}/MANIFEST.json")
    by_rank = manifest["filesByRank"]
    assert set(by_rank) == {"0", "1"}  # one file set per rank: the shards, and each rank's RNG state
    for rank in ("0", "1"):
        assert any(name.endswith(".distcp") for name in by_rank[rank]) and f"rng_state_{rank}.pt" in by_rank[rank]
    assert chunks_per_parameter(env, "fsdp-straight", STEPS) == {2}  # every parameter saved as one shard per rank
    assert committed(env, "fsdp-straight") == [STEPS - EVERY, STEPS]  # keepCheckpoints: 2, in the object store
    progress = env.get_json(f"{prefix('fsdp-straight')}/progress.json")
    assert progress["phase"] == "Done" and progress["step"] == STEPS

    name = "fsdp-killed"
    first = env.run(MODULE, context(name, spec()), extra_env={"KUBEFORGE_STEP_DELAY_SECONDS": "1.0"},
                    kill_when=lambda: bool(env.keys(f"{prefix(name)}/checkpoints/step-6/MANIFEST.json")),
                    timeout=420)
    assert first.killed, f"attempt 1 ended by itself ({first.returncode}):\n{first.stderr[-3000:]}"
    second = env.run(MODULE, context(name, spec(), attempt=2), timeout=420)
    assert_ok(second, "attempt 2")
    resumed = env.get_json(f"{prefix(name)}/outputs/result.json")
    assert resumed["resumedFrom"].endswith("/checkpoints/step-6/") or resumed["resumedFrom"].endswith("step-8/")
    assert losses(env, resumed["mlflowRunId"]) == reference  # exact equality, not a tolerance
    for artifact in ("model", "ema-model"):
        got = weights(env, f"{prefix(name)}/outputs/{artifact}/model.safetensors")
        expected = weights(env, f"{prefix('fsdp-straight')}/outputs/{artifact}/model.safetensors")
        assert got.keys() == expected.keys()
        for key in got:
            assert (got[key] == expected[key]).all(), (artifact, key)


@pytest.fixture(scope="module")
def ddp_run(workload_env):
    """An uninterrupted 2-worker DDP run: (its result.json, its per-step losses)."""
    env = workload_env
    finished = env.run(MODULE, context("ddp", spec(parallelism={"strategy": "ddp"},
                                                   output={"registeredModelName": "tiny-ddp"})), timeout=420)
    assert_ok(finished, "DDP run")
    result = env.get_json(f"{prefix('ddp')}/outputs/result.json")
    return result, losses(env, result["mlflowRunId"])


def test_ddp_trains_registers_and_keeps_the_last_checkpoints(workload_env, ddp_run):
    env = workload_env
    result, curve = ddp_run
    assert sorted(curve) == list(range(1, STEPS + 1)) and curve[STEPS] < curve[1]
    assert committed(env, "ddp") == [STEPS - EVERY, STEPS]
    assert chunks_per_parameter(env, "ddp", STEPS) == {1}  # replicated: each parameter whole, saved once
    assert result["registeredModelUri"] == "models:/tiny-ddp/1"
    assert result["registeredEmaModelUri"] == "models:/tiny-ddp-ema/1"
    import mlflow
    from transformers import AutoModelForCausalLM

    mlflow.set_tracking_uri(env.tracking_uri)
    from kubeforge_workloads.common.models import load_model_dir

    for uri in (result["registeredModelUri"], result["registeredEmaModelUri"]):
        model = AutoModelForCausalLM.from_pretrained(load_model_dir(uri, env.tmp / uri.replace("/", "_"), None))
        assert model.config.model_type == "llama"

"""Largest absolute difference allowed, after a resume on 1 worker instead of 2, on per-step losses (about 4 to 9)
and on weights. Each step reads the same sample ids whatever the worker count (the sampler's contract, tested in
tests/unit/workloads/test_pretrain_sampler_ema.py), but one worker sums 4 micro-batch gradients where two sum 2
each and all-reduce: float32 summation order differs in the last bits, which AdamW carries into the weights.
Measured: 1.2e-7 on losses and weights after 6 steps on one worker; 1e-5 leaves ~100x room and stays far below
a skipped or repeated batch (which moves the loss by 1e-2 or more)."""
