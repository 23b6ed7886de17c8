"""task: diffusion run the way a RayJob runs it: `python -m kubeforge_workloads.pretrain` with KUBEFORGE_CONTEXT,
real Ray Train with 2 CPU workers (DDP, gloo), real S3 protocol (moto server), real MLflow (sqlite), the seed's
shapes dataset and tiny CLIP as the seed CLI uploads them. A run killed (SIGKILL of the whole process group) after
a checkpoint in phase 1 resumes in its next attempt from the latents the first attempt computed and ends with the
uninterrupted run's per-step losses, final U-Net and EMA U-Net (compared with ==)."""

from __future__ import annotations

import pytest

from tests.integration.conftest_workloads import BUCKET, EXPERIMENT, NAMESPACE, WorkloadEnv, workload_env  # noqa: F401

pytestmark = pytest.mark.slow

MODULE = "kubeforge_workloads.pretrain"
STEPS, EVERY = 6, 2  # phase 1: steps 1-3 at 16 px, phase 2: steps 4-6 at 32 px; EMA from step 4 (ceil(6 x 0.6))


def spec() -> dict:
    from kubeforge.api.trainingjob import TrainingJobSpec
    from kubeforge_workloads.seed.shapes import TINY_UNET_CONFIG, TINY_VAE_CONFIG

    clip = f"s3://{BUCKET}/seed/models/tiny-clip"
    return TrainingJobSpec.model_validate({
        "task": "diffusion",
        "model": {"unet": {"config": TINY_UNET_CONFIG}, "vae": {"config": TINY_VAE_CONFIG},
                  "textEncoder": {"uri": clip}, "tokenizer": {"uri": clip}},
        "dataset": {"uri": f"s3://{BUCKET}/seed/datasets/shapes/", "format": "webdataset"},
        "phases": [{"resolution": 16, "steps": 3}, {"resolution": 32, "steps": 3}],
        "precompute": {"latents": True, "dtype": "fp16"},
        "training": {"globalBatchSize": 4, "microBatchSize": 1, "learningRate": 0.002, "warmupSteps": 1,
                     "scheduler": "constant_with_warmup", "checkpointEverySteps": EVERY, "keepCheckpoints": 2,
                     "seed": 7},
        "parallelism": {"strategy": "ddp"},
        "ema": {"decay": 0.8, "startFraction": 0.6},
        "samples": {"count": 2, "inferenceSteps": 2},
        "resources": {"workers": 2, "cpusPerWorker": 1},
        "output": {"registeredModelName": "tiny-diffusion"},
    }).model_dump(mode="json", by_alias=True, exclude_none=True)


def prefix(name: str) -> str:
    return f"{NAMESPACE}/TrainingJob/{name}"


def context(name: str, attempt: int = 1) -> dict:
    return {"kind": "TrainingJob", "namespace": NAMESPACE, "name": name, "uid": f"uid-{name}", "generation": 1,
            "attempt": attempt, "spec": spec(), "storage": {"bucket": BUCKET, "prefix": prefix(name)},
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


def unet_weights(env: WorkloadEnv, name: str, folder: str) -> dict:
    from safetensors.torch import load

    key = f"{prefix(name)}/outputs/model/{folder}/diffusion_pytorch_model.safetensors"
    return load(env.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def test_killed_in_phase_1_resumes_from_the_cached_latents_to_the_uninterrupted_run(workload_env):
    from kubeforge.storage.layout import MANIFEST_FILE, parse_s3_uri

    env = workload_env
    name = "diffusion-killed"
    first = env.run(MODULE, context(name), extra_env={"KUBEFORGE_STEP_DELAY_SECONDS": "1.0"},
                    kill_when=lambda: bool(env.keys(f"{prefix(name)}/checkpoints/step-{EVERY}/MANIFEST.json")),
                    timeout=300)
    assert first.killed, f"attempt 1 ended by itself ({first.returncode}):\n{first.stderr[-3000:]}"
    second = env.run(MODULE, context(name, attempt=2), timeout=300)
    assert_ok(second, "attempt 2")
    resumed = env.get_json(f"{prefix(name)}/outputs/result.json")
    newest = int(resumed["resumedFrom"].rstrip("/").rsplit("step-", 1)[1])
    assert EVERY <= newest < STEPS, resumed["resumedFrom"]  # an upload in flight at the kill may have committed
    # both phases' latents come from the cache attempt 1 wrote; attempt 2 computed none
    assert [entry["resolution"] for entry in resumed["latents"]] == ([16, 32] if newest < 3 else [32])
    for entry in resumed["latents"]:
        assert entry["reused"], entry
        bucket, key = parse_s3_uri(entry["uri"])
        manifest = env.get_json(key + MANIFEST_FILE)
        assert (manifest["createdBy"]["name"], manifest["createdBy"]["attempt"]) == (name, 1)

    straight = env.run(MODULE, context("diffusion-straight"), timeout=300)
    assert_ok(straight, "uninterrupted run")
    reference = env.get_json(f"{prefix('diffusion-straight')}/outputs/result.json")
    curve = losses(env, reference["mlflowRunId"])
    assert sorted(curve) == list(range(1, STEPS + 1))
    assert losses(env, resumed["mlflowRunId"]) == curve  # exact equality, not a tolerance
    for folder in ("unet", "unet_ema"):
        got, expected = unet_weights(env, name, folder), unet_weights(env, "diffusion-straight", folder)
        assert got.keys() == expected.keys()
        for key in got:
            assert (got[key] == expected[key]).all(), (folder, key)
    assert resumed["registeredModelUri"] == "models:/tiny-diffusion/1"  # the first resource to finish
    from mlflow.tracking import MlflowClient

    grids = [a.path for a in MlflowClient(env.tracking_uri).list_artifacts(reference["mlflowRunId"], "samples")]
    assert grids == [f"samples/step-{step:08d}.png" for step in range(EVERY, STEPS + 1, EVERY)]
    print("diffusion runs (name, attempt, seconds, exit code):", env.runs)
