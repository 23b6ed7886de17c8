"""The diffusion training loop in one process (no Ray: the loop itself, on TrainingLoop, with real S3 protocol
through moto, real MLflow, the seed's tiny U-Net, VAE and CLIP on the seed's shapes): the loss falls, sample grids
reach MLflow, the exported Diffusers pipeline loads and generates, and a run interrupted after a checkpoint (in
phase 1, and in phase 2 inside the EMA window) resumes in the right phase to the same per-step losses and the same
final U-Net and EMA weights as an uninterrupted one (compared with ==); sampling changes no weight."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from kubeforge.api.trainingjob import TrainingJobSpec  # noqa: E402
from kubeforge.api.workload import MlflowContext, StorageContext, WorkloadContext  # noqa: E402
from kubeforge_workloads.common.storage import WorkloadStorage, upload_tree  # noqa: E402
from kubeforge_workloads.pretrain.diffusion import DiffusionPretraining, use_low_precision_norms  # noqa: E402
from tests.moto_s3 import in_process_s3_store  # noqa: E402
from tests.unit.workloads.conftest import BUCKET, isolated_mlflow, run_to_end  # noqa: E402

PHASES = [{"resolution": 16, "steps": 4}, {"resolution": 32, "steps": 4}]
STEPS, EVERY = 8, 2
EMA_START = 5  # ceil(8 x 0.6): the average runs in phase 2 only
LATENT_SIDE = {16: 4, 32: 8}  # the tiny VAE downsamples by 4


class Killed(BaseException):
    """Stands for SIGKILL right after a checkpoint was committed."""


def spec(**changes) -> TrainingJobSpec:
    from kubeforge_workloads.seed.shapes import TINY_UNET_CONFIG, TINY_VAE_CONFIG

    base = {"task": "diffusion",
            "model": {"unet": {"config": TINY_UNET_CONFIG}, "vae": {"config": TINY_VAE_CONFIG},
                      "textEncoder": {"uri": f"s3://{BUCKET}/seed/models/tiny-clip"},
                      "tokenizer": {"uri": f"s3://{BUCKET}/seed/models/tiny-clip"}},
            "dataset": {"uri": f"s3://{BUCKET}/seed/datasets/shapes/", "format": "webdataset"},
            "phases": PHASES,
            "precompute": {"latents": True, "dtype": "fp16"},
            "training": {"globalBatchSize": 4, "microBatchSize": 2, "learningRate": 0.002, "warmupSteps": 1,
                         "scheduler": "constant_with_warmup", "checkpointEverySteps": EVERY, "keepCheckpoints": 2,
                         "seed": 7},
            "ema": {"decay": 0.8, "startFraction": 0.6},
            "samples": {"count": 2, "inferenceSteps": 2},
            "output": {"registeredModelName": "tiny-diffusion"}}
    base.update(changes)
    return TrainingJobSpec.model_validate(base)


class Recorded(DiffusionPretraining):
    """Records the latent side of every micro-batch it trains on, and can die right after a checkpoint."""
    kill_after = 0
    seen: list = []

    def micro_batch_loss(self, batch, step: int, index: int):
        self.seen.append((step, batch["latents"].shape[-1]))
        return super().micro_batch_loss(batch, step, index)

    def save(self, step: int) -> None:
        super().save(step)
        if step == self.kill_after:
            self.checkpointer.wait()
            raise Killed()


class Runs:
    def __init__(self, store, tracking_uri: str):
        self.store, self.tracking_uri = store, tracking_uri

    def run(self, name: str, attempt: int = 1, kill_after: int = 0, **changes) -> Recorded:
        the_spec = spec(**changes)
        context = WorkloadContext(kind="TrainingJob", namespace="ns", name=name, uid=f"uid-{name}", generation=1,
                                  attempt=attempt, spec=the_spec.model_dump(mode="json", by_alias=True),
                                  storage=StorageContext(bucket=BUCKET, prefix=f"ns/TrainingJob/{name}"),
                                  mlflow=MlflowContext(experiment="ns/TrainingJob", run_name=name,
                                                       tracking_uri=self.tracking_uri))
        Recorded.kill_after, Recorded.seen = kill_after, []
        return run_to_end(Recorded(context, the_spec, WorkloadStorage(context, self.store), rank=0, heartbeat=None))

    def result(self, name: str) -> dict:
        import json

        return json.loads(self.store.get(BUCKET, f"ns/TrainingJob/{name}/outputs/result.json"))

    def weights(self, name: str, folder: str) -> dict:
        from safetensors.torch import load

        return load(self.store.get(BUCKET, f"ns/TrainingJob/{name}/outputs/model/{folder}/"
                                           "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The seed uploaded into moto's in-process S3, a fresh MLflow store, one thread (two cores shared by many
    processes make torch's default threads thrash), and the uninterrupted reference run."""
    from kubeforge_workloads.seed.shapes import build_tiny_clip, write_shapes

    tmp = tmp_path_factory.mktemp("diffusion")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as monkeypatch, in_process_s3_store(BUCKET, monkeypatch) as store, \
            isolated_mlflow(tmp, monkeypatch) as uri:
        upload_tree(store.client, build_tiny_clip(tmp / "tiny-clip"), BUCKET, "seed/models/tiny-clip/")
        upload_tree(store.client, write_shapes(tmp / "shapes", count=16), BUCKET, "seed/datasets/shapes/")
        try:
            runs = Runs(store, uri)
            runs.reference = runs.run("straight")
            runs.reference_seen = list(Recorded.seen)
            yield runs
        finally:
            torch.set_num_threads(threads)


def losses(run_id: str) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    latest = {}
    for metric in sorted(MlflowClient().get_metric_history(run_id, "loss"), key=lambda m: m.timestamp):
        latest[metric.step] = metric.value
    return dict(sorted(latest.items()))


def assert_same_weights(runs: Runs, name: str, reference: str = "straight") -> None:
    for folder in ("unet", "unet_ema"):
        got, expected = runs.weights(name, folder), runs.weights(reference, folder)
        assert got.keys() == expected.keys()
        for key in got:
            assert torch.equal(got[key], expected[key]), (folder, key)


def test_trains_in_phases_and_logs_sample_grids(runs):
    from mlflow.tracking import MlflowClient

    result = runs.result("straight")
    curve = losses(result["mlflowRunId"])
    assert sorted(curve) == list(range(1, STEPS + 1))
    print("losses", {step: round(loss, 4) for step, loss in curve.items()})
    assert curve[4] < curve[1] and curve[8] < curve[5]  # it learns, within each phase (each has its own scale)
    # the global step decides the phase: 16 px (4x4 latents) for steps 0-3, 32 px (8x8) for 4-7
    assert sorted(set(runs.reference_seen)) == [(step, LATENT_SIDE[16]) for step in range(4)] + \
        [(step, LATENT_SIDE[32]) for step in range(4, 8)]
    grids = [a.path for a in MlflowClient().list_artifacts(result["mlflowRunId"], "samples")]
    assert grids == [f"samples/step-{step:08d}.png" for step in range(EVERY, STEPS + 1, EVERY)]
    assert [entry["resolution"] for entry in result["latents"]] == [16, 32]
    assert result["skipped"] == {}


def test_exported_pipeline_loads_with_diffusers_and_generates(runs, tmp_path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from kubeforge_workloads.common.storage import download_uri

    result = runs.result("straight")
    assert result["emaModelUri"] == result["modelUri"] + "/unet_ema"
    assert result["registeredModelUri"] == "models:/tiny-diffusion/1"
    assert result["registeredEmaModelUri"] == "models:/tiny-diffusion-ema/1"
    directory = download_uri(runs.store, result["modelUri"] + "/", tmp_path / "pipeline")
    pipeline = StableDiffusionPipeline.from_pretrained(directory)
    pipeline.set_progress_bar_config(disable=True)
    [image] = pipeline("a red circle on a blue background", height=32, width=32, num_inference_steps=2,
                       generator=torch.Generator().manual_seed(0)).images
    assert image.size == (32, 32)
    ema = UNet2DConditionModel.from_pretrained(directory, subfolder="unet_ema")
    assert any(not torch.equal(p, q) for p, q in zip(ema.parameters(), pipeline.unet.parameters()))


def test_two_failures_resume_to_the_uninterrupted_run(runs):
    """The seed's scenario: killed after a checkpoint in phase 1, then again in phase 2 inside the EMA window."""
    name = "killed"
    with pytest.raises(Killed):
        runs.run(name, kill_after=2, samples={"count": 0})
    with pytest.raises(Killed):
        runs.run(name, attempt=2, kill_after=6, samples={"count": 0})
    second_seen = list(Recorded.seen)
    last = runs.run(name, attempt=3, samples={"count": 0})
    result = runs.result(name)
    assert result["resumedFrom"].endswith("/checkpoints/step-6/")
    assert last.ema.active and last.ema.start_step == EMA_START
    # each resume lands in the right phase: it trains exactly the steps (and resolutions) the reference trained
    reference = sorted(set(runs.reference_seen))
    assert sorted(set(second_seen)) == [entry for entry in reference if 2 <= entry[0] < 6]
    assert sorted(set(last.seen)) == [entry for entry in reference if entry[0] >= 6]
    assert all(entry["reused"] for entry in result["latents"]), result["latents"]  # cached, not recomputed
    assert losses(result["mlflowRunId"]) == losses(runs.result("straight")["mlflowRunId"])  # ==, no tolerance
    assert_same_weights(runs, name)


def test_fsdp_shard_grad_op_over_the_unet_blocks_resumes_identically(runs):
    """FSDP2 over the U-Net's down/mid/up blocks on a one-process gloo group (Ray's 2-worker FSDP path is the
    causal LM's, tested in tests/integration/test_pretrain_workload.py): killed in the EMA window, resumed, equal
    to an uninterrupted FSDP run (FSDP's gradient path differs from the unwrapped reference in the last bits)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        fsdp = {"strategy": "fsdp", "fsdpShardingStrategy": "SHARD_GRAD_OP"}
        runs.run("fsdp-straight", parallelism=fsdp, samples={"count": 0})
        with pytest.raises(Killed):
            runs.run("fsdp", kill_after=6, parallelism=fsdp)  # sampling on: gathers the sharded U-Net and EMA
        resumed = runs.run("fsdp", attempt=2, parallelism=fsdp)
    finally:
        dist.destroy_process_group()
    assert type(resumed.model).__name__ == "FSDPUNet2DConditionModel"
    assert {type(block).__name__ for block in resumed.sharded_blocks(resumed.model)} == {
        "FSDPCrossAttnDownBlock2D", "FSDPDownBlock2D", "FSDPUNetMidBlock2DCrossAttn", "FSDPUpBlock2D",
        "FSDPCrossAttnUpBlock2D"}
    assert losses(runs.result("fsdp")["mlflowRunId"]) == losses(runs.result("fsdp-straight")["mlflowRunId"])
    assert_same_weights(runs, "fsdp", reference="fsdp-straight")


def test_sampling_changes_no_weight(runs):
    runs.run("no-samples", samples={"count": 0})
    assert_same_weights(runs, "no-samples")  # the reference sampled at every checkpoint


def test_low_precision_norms_normalise_in_the_autocast_dtype():
    norms = torch.nn.Sequential(torch.nn.GroupNorm(2, 4), torch.nn.LayerNorm(4))
    reference = {k: v.clone() for k, v in norms.state_dict().items()}
    x = torch.randn(2, 4, 3, 4)
    full = norms(x)
    assert use_low_precision_norms(norms) == 2
    assert norms.state_dict().keys() == reference.keys()
    assert torch.equal(norms(x), full)  # outside autocast: the original float32 norms
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = norms(x)
        group = norms[0](x)
    assert low.dtype == group.dtype == torch.bfloat16  # autocast alone would have run them in float32
    assert torch.allclose(low.float(), full, atol=0.1)


@pytest.mark.parametrize("changes, message", [
    ({"dataset": {"uri": f"s3://{BUCKET}/seed/datasets/shapes/", "format": "parquet"}},
     "spec.dataset.uri s3://kfbucket/seed/datasets/shapes/ holds no .parquet files for spec.dataset.format parquet; "
     "it holds webdataset files: set spec.dataset.format: webdataset"),
    ({"dataset": {"uri": f"s3://{BUCKET}/seed/datasets/nothing/", "format": "webdataset"}},
     "spec.dataset.uri s3://kfbucket/seed/datasets/nothing/ does not exist in the object store"),
    ({"model": {"unet": {"config": {"cross_attention_dim": 64}}, "vae": {"config": {"latent_channels": 4}},
                "textEncoder": {"config": {"hidden_size": 32}},
                "tokenizer": {"uri": f"s3://{BUCKET}/seed/models/tiny-clip"}}},
     "spec.model.unet cross_attention_dim (64) must equal spec.model.textEncoder hidden_size (32)"),
    ({"model": {"unet": {"config": {}}, "vae": {"config": {}}, "textEncoder": {"config": {}},
                "tokenizer": {"uri": f"s3://{BUCKET}/seed/models/no-clip"}}},
     f"spec.model.tokenizer.uri s3://{BUCKET}/seed/models/no-clip does not exist in the object store"),
], ids=["format", "dataset", "cross-attention", "tokenizer"])
def test_preflight_names_the_field(runs, changes, message):
    from kubeforge_workloads.common.errors import UserError
    from kubeforge_workloads.pretrain.driver import preflight

    the_spec = spec(**changes)
    context = WorkloadContext(kind="TrainingJob", namespace="ns", name="preflight", uid="uid-preflight",
                              generation=1, attempt=1, spec=the_spec.model_dump(mode="json", by_alias=True),
                              storage=StorageContext(bucket=BUCKET, prefix="ns/TrainingJob/preflight"),
                              mlflow=MlflowContext(experiment="ns/TrainingJob", run_name="preflight"))
    with pytest.raises(UserError) as raised:
        preflight(the_spec, WorkloadStorage(context, runs.store))
    assert str(raised.value) == message
