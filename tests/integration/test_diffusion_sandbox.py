"""task: diffusion through the whole chain in the sandbox (issue 16), the seed's scenario: the shipped
`examples/diffusion.yaml` (two phases, 32 then 64 px, fp16 latents precomputed, EMA in phase 2 only, 2 DDP workers)
runs uninterrupted beside a copy that is killed twice as a lost node would kill it, once mid-phase-1 and once inside
the EMA window of phase 2. The copy reaches Succeeded after exactly two restarts with the uninterrupted run's
per-step losses, final U-Net and EMA U-Net (compared with ==), and no attempt after the first computes latents
again. The example itself: the loss falls, MLflow holds a sample grid per checkpoint, and the exported Diffusers
pipeline loads with diffusers and generates an image."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from kubeforge.storage.layout import MANIFEST_FILE, checkpoint_step_of, parse_s3_uri
from tests.conftest import REPO_ROOT
from tests.integration.test_trainingjob_resilience import (Objects, assert_same_tensors, kill_attempts, step_losses,
                                                           wait_final)

pytestmark = pytest.mark.slow

EXAMPLE_FILE = REPO_ROOT / "examples" / "diffusion.yaml"
EXAMPLE = yaml.safe_load(EXAMPLE_FILE.read_text())
STEADY = EXAMPLE["metadata"]["name"]
PHASES = EXAMPLE["spec"]["phases"]
STEPS = sum(phase["steps"] for phase in PHASES)
EVERY = EXAMPLE["spec"]["training"]["checkpointEverySteps"]
PHASE_1_END = PHASES[0]["steps"]
EMA_START = 15  # ema.startFraction 0.75 of 20 steps


def chaotic_copy(name: str) -> dict:
    obj = copy.deepcopy(EXAMPLE)
    obj["metadata"] = {"name": name}
    obj["spec"]["output"] = {"registeredModelName": name}
    obj["spec"]["ray"] = {"runtimeEnv": {"env_vars": {"KUBEFORGE_STEP_DELAY_SECONDS": "1.0"}}}
    return obj


def unet(objects: Objects, folder: str) -> dict:
    from safetensors.torch import load

    key = objects.prefix.output_key("model", folder, "diffusion_pytorch_model.safetensors")
    return load(objects.store.get(objects.prefix.bucket, key))


def test_killed_in_phase_1_and_in_the_ema_window_it_ends_as_the_uninterrupted_example(sandbox, tmp_path):
    assert EVERY < PHASE_1_END < EMA_START <= STEPS - EVERY  # the kills below land where they are meant to
    name = "diffusion-chaos"
    sandbox.kubectl("apply", "-f", str(EXAMPLE_FILE))  # the reference, alongside
    sandbox.kubectl("apply", "-f", "-", input=yaml.safe_dump(chaotic_copy(name)))
    objects = Objects(sandbox, name)
    ema_checkpoint = (EMA_START // EVERY + 1) * EVERY  # the first checkpoint holding EMA weights
    newest_at_failure = kill_attempts(sandbox, objects, name,
                                      [(EVERY + 2, EVERY), (ema_checkpoint + 1, ema_checkpoint)], timeout=600)
    assert newest_at_failure[0] < PHASE_1_END and newest_at_failure[1] >= EMA_START, newest_at_failure

    final = wait_final(sandbox, name)
    assert final["phase"] == "Succeeded", json.dumps(final, indent=1)
    attempts = final["attempts"]
    assert [a["outcome"] for a in attempts] == ["Failed", "Failed", "Succeeded"] and final["restarts"] == 2
    assert [checkpoint_step_of(a.get("resumedFrom")) for a in attempts[1:]] == newest_at_failure
    # the last attempt started in phase 2: it loaded phase 2's latents from the cache, computed none
    caches = final["output"]["latents"]
    assert [entry["resolution"] for entry in caches] == [PHASES[1]["resolution"]] and caches[0]["reused"]
    for entry in caches:
        bucket, key = parse_s3_uri(entry["uri"])
        created_by = json.loads(objects.store.get(bucket, key + MANIFEST_FILE))["createdBy"]
        assert created_by["attempt"] == 1, created_by  # by a first attempt (of either resource), never a resume

    steady_final = wait_final(sandbox, STEADY)
    assert steady_final["phase"] == "Succeeded" and len(steady_final["attempts"]) == 1
    assert steady_final["output"]["registeredModelName"] == STEADY and final["output"]["skipped"] == {}
    reference = step_losses(sandbox, STEADY)
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert step_losses(sandbox, name) == reference  # exact equality, not a tolerance
    early, late = [reference[s] for s in range(1, 5)], [reference[s] for s in range(STEPS - 3, STEPS + 1)]
    assert sum(late) < sum(early), reference  # the loss falls
    steady = Objects(sandbox, STEADY)
    for folder in ("unet", "unet_ema"):
        assert_same_tensors(unet(objects, folder), unet(steady, folder), folder)

    from mlflow.tracking import MlflowClient

    run_id = steady_final["output"]["mlflowRunId"]
    grids = [a.path for a in MlflowClient(sandbox.state.mlflow_url).list_artifacts(run_id, "samples")]
    assert grids == [f"samples/step-{step:08d}.png" for step in range(EVERY, STEPS + 1, EVERY)]

    import torch
    from diffusers import StableDiffusionPipeline

    from kubeforge_workloads.common.storage import download_uri

    local = download_uri(steady.store, steady_final["output"]["modelUri"], tmp_path / "pipeline")
    pipeline = StableDiffusionPipeline.from_pretrained(local, safety_checker=None, requires_safety_checker=False)
    image = pipeline(EXAMPLE["spec"]["samples"]["prompts"][0], height=32, width=32, num_inference_steps=2,
                     generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)
