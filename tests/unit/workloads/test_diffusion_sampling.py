"""A diffusion run's checkpoint grids (the real loop in one process: moto S3, MLflow on sqlite, the seed's tiny
U-Net, VAE and CLIP): every grid is in MLflow, drawn from its checkpoint's weights, a grid that fails fails the run,
one sampling U-Net serves every row and holds exactly the weights it is handed, drawing a grid moves no global RNG,
and samples.everyCheckpoints draws a grid at every Nth checkpoint and the last step only."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from kubeforge.api.trainingjob import TrainingJobSpec  # noqa: E402
from kubeforge.api.workload import MlflowContext, StorageContext, WorkloadContext  # noqa: E402
from kubeforge_workloads.common.storage import WorkloadStorage, upload_tree  # noqa: E402
from kubeforge_workloads.pretrain.diffusion import DiffusionPretraining  # noqa: E402
from tests.moto_s3 import in_process_s3_store  # noqa: E402
from tests.unit.workloads.conftest import BUCKET, isolated_mlflow, run_to_end  # noqa: E402

STEPS, EVERY = 6, 2


def spec(steps: int = STEPS, every_checkpoints: int = 1) -> TrainingJobSpec:
    from kubeforge_workloads.seed.shapes import TINY_UNET_CONFIG, TINY_VAE_CONFIG

    clip = f"s3://{BUCKET}/seed/models/tiny-clip"
    return TrainingJobSpec.model_validate({
        "task": "diffusion",
        "model": {"unet": {"config": TINY_UNET_CONFIG}, "vae": {"config": TINY_VAE_CONFIG},
                  "textEncoder": {"uri": clip}, "tokenizer": {"uri": clip}},
        "dataset": {"uri": f"s3://{BUCKET}/seed/datasets/shapes/", "format": "webdataset"},
        "phases": [{"resolution": 16, "steps": steps}],
        "precompute": {"latents": True, "dtype": "fp16"},
        "training": {"globalBatchSize": 4, "microBatchSize": 4, "learningRate": 0.002, "warmupSteps": 1,
                     "scheduler": "constant_with_warmup", "checkpointEverySteps": EVERY, "keepCheckpoints": 2,
                     "seed": 7},
        "ema": {"decay": 0.8, "startFraction": 0.5},
        "samples": {"count": 2, "inferenceSteps": 2, "everyCheckpoints": every_checkpoints}})


class HeldGrids(DiffusionPretraining):
    """Records the weights at each checkpoint, whether each grid was drawn from them, and every sampling U-Net it
    was handed; can fail the grid of one step."""
    fail_grid_at = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.weights_at: dict[int, dict] = {}
        self.grids_of_checkpointed_weights: dict[int, bool] = {}
        self.unets: list = []

    def after_checkpoint(self, step: int) -> None:
        self.weights_at[step] = {name: tensor.clone() for name, tensor in self.model.state_dict().items()}
        super().after_checkpoint(step)

    def unet_from(self, state: dict):
        unet = super().unet_from(state)
        self.unets.append(unet)
        return unet

    def log_grid(self, states: dict, prompts: list[str], resolution: int, step: int) -> None:
        if step == self.fail_grid_at:
            raise RuntimeError("the grid could not be drawn")
        self.grids_of_checkpointed_weights[step] = all(
            torch.equal(states["unet"][name], tensor) for name, tensor in self.weights_at[step].items())
        super().log_grid(states, prompts, resolution, step)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from kubeforge_workloads.seed.shapes import build_tiny_clip, write_shapes

    tmp = tmp_path_factory.mktemp("diffusion-sampling")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as monkeypatch, in_process_s3_store(BUCKET, monkeypatch) as store, \
            isolated_mlflow(tmp, monkeypatch):
        upload_tree(store.client, build_tiny_clip(tmp / "tiny-clip"), BUCKET, "seed/models/tiny-clip/")
        upload_tree(store.client, write_shapes(tmp / "shapes", count=8), BUCKET, "seed/datasets/shapes/")
        try:
            yield store
        finally:
            torch.set_num_threads(threads)


def job(store, name: str, fail_grid_at: int = 0, **changes) -> HeldGrids:
    the_spec = spec(**changes)
    context = WorkloadContext(kind="TrainingJob", namespace="ns", name=name, uid=f"uid-{name}", generation=1,
                              attempt=1, spec=the_spec.model_dump(mode="json", by_alias=True),
                              storage=StorageContext(bucket=BUCKET, prefix=f"ns/TrainingJob/{name}"),
                              mlflow=MlflowContext(experiment="ns/TrainingJob", run_name=name))
    held = HeldGrids(context, the_spec, WorkloadStorage(context, store), rank=0, heartbeat=None)
    held.fail_grid_at = fail_grid_at
    return held


@pytest.fixture(scope="module")
def finished(store) -> HeldGrids:
    return run_to_end(job(store, "held"))


def test_every_grid_is_drawn_from_its_checkpoint_and_logged(finished):
    from mlflow.tracking import MlflowClient

    assert finished.grids_of_checkpointed_weights == {step: True for step in range(EVERY, STEPS + 1, EVERY)}
    grids = [a.path for a in MlflowClient().list_artifacts(finished.run_id, "samples")]
    assert grids == [f"samples/step-{step:08d}.png" for step in range(EVERY, STEPS + 1, EVERY)]


def test_one_sampling_unet_serves_every_row_of_every_grid(finished):
    rows = 1 + 2 + 2 + 2  # the U-Net at step 2; U-Net and EMA (from step 3) at 4 and 6; both again for export
    assert len(finished.unets) == rows and all(unet is finished.unets[0] for unet in finished.unets)


def test_drawing_a_grid_moves_no_global_rng(finished):
    import numpy as np

    state = {name: tensor.clone() for name, tensor in finished.model.state_dict().items()}
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()
    grid = finished.sample_grid({"unet": state}, finished.prompts(), 16)
    after = torch.get_rng_state(), random.getstate(), np.random.get_state()
    assert grid.size == (2 * 16, 16)
    assert torch.equal(before[0], after[0])
    assert before[1] == after[1]
    assert before[2][0] == after[2][0] and np.array_equal(before[2][1], after[2][1]) and before[2][2:] == after[2][2:]


@pytest.mark.parametrize("step", [EVERY, STEPS], ids=["mid-run", "last-checkpoint"])
def test_a_grid_that_fails_fails_the_run(store, step):
    with pytest.raises(RuntimeError, match="the grid could not be drawn"):
        run_to_end(job(store, f"failing-{step}", fail_grid_at=step))


def test_the_sampling_unet_holds_exactly_the_weights_it_is_given(finished):
    """Built on the meta device (no random init), then every parameter loaded: none left empty or random."""
    state = {name: tensor.clone() + 0.25 for name, tensor in finished.model.state_dict().items()}
    unet = finished.unet_from(state)
    assert not any(tensor.is_meta for tensor in unet.state_dict().values())
    assert unet.state_dict().keys() == state.keys()
    assert all(torch.equal(unet.state_dict()[name], tensor) for name, tensor in state.items())


def test_every_checkpoints_draws_every_nth_checkpoints_grid_and_the_last_steps(store):
    """Checkpoints at 2, 4, 6 and 7 (the end); with everyCheckpoints 2 the grids of 4 and 7 only. The checkpoints
    themselves are all taken."""
    from mlflow.tracking import MlflowClient

    held = run_to_end(job(store, "every-second", steps=7, every_checkpoints=2))
    assert sorted(held.weights_at) == [2, 4, 6, 7]
    assert held.grids_of_checkpointed_weights == {4: True, 7: True}
    grids = [a.path for a in MlflowClient().list_artifacts(held.run_id, "samples")]
    assert grids == ["samples/step-00000004.png", "samples/step-00000007.png"]
