"""The pretraining loop in one process (no Ray: the loop itself, with real S3 protocol through moto, real MLflow,
a tiny Llama built from a config): it trains, exports the model and the EMA model, keeps only the last
checkpoints, and a run interrupted after a checkpoint resumes to the same per-step losses and the same final and
EMA weights as an uninterrupted one (compared with ==)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from kubeforge.api.trainingjob import TrainingJobSpec  # noqa: E402
from kubeforge.api.workload import MlflowContext, StorageContext, WorkloadContext  # noqa: E402
from kubeforge_workloads.common.checkpoint import Checkpointer  # noqa: E402
from kubeforge_workloads.common.storage import WorkloadStorage, upload_tree  # noqa: E402
from kubeforge_workloads.pretrain.train import Pretraining  # noqa: E402
from tests.unit.workloads.conftest import BUCKET, run_to_end  # noqa: E402

STEPS, EVERY = 8, 2


class Killed(BaseException):
    """Stands for SIGKILL right after a checkpoint was committed."""


@pytest.fixture
def seeded(object_store, tmp_path):
    from kubeforge_workloads.seed.build import build_tiny_llama, write_datasets

    upload_tree(object_store.client, build_tiny_llama(tmp_path / "tok"), BUCKET, "seed/tok/")
    train, _ = write_datasets(tmp_path / "data")
    object_store.client.upload_file(str(train), BUCKET, "seed/train.jsonl")
    return object_store


def spec(**ema) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({
        "model": {"config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4}},
        "tokenizer": {"uri": f"s3://{BUCKET}/seed/tok"},
        "dataset": {"uri": f"s3://{BUCKET}/seed/train.jsonl", "textField": "response"},
        "training": {"maxSteps": STEPS, "globalBatchSize": 4, "microBatchSize": 2, "sequenceLength": 32,
                     "learningRate": 0.01, "warmupSteps": 2, "checkpointEverySteps": EVERY, "keepCheckpoints": 2,
                     "seed": 5},
        "ema": {"decay": 0.9, "startFraction": 0.5},
        "output": {"registeredModelName": "tiny-pretrained"}})


def context(name: str, attempt: int, tracking_uri: str) -> WorkloadContext:
    return WorkloadContext(kind="TrainingJob", namespace="ns", name=name, uid=f"uid-{name}", generation=1,
                           attempt=attempt, spec=spec().model_dump(mode="json", by_alias=True),
                           storage=StorageContext(bucket=BUCKET, prefix=f"ns/TrainingJob/{name}"),
                           mlflow=MlflowContext(experiment="ns/TrainingJob", run_name=name, tracking_uri=tracking_uri))


class KilledAfter(Pretraining):
    kill_after: int = 0

    def save(self, step: int) -> None:
        super().save(step)
        if step == self.kill_after:
            self.checkpointer.wait()
            raise Killed()


def run(name: str, attempt: int, store, tracking_uri, cls=Pretraining, kill_after: int = 0):
    cls.kill_after = kill_after
    storage = WorkloadStorage(context(name, attempt, tracking_uri), store)
    return run_to_end(cls(storage.context, spec(), storage, rank=0, heartbeat=None))


def losses(run_id: str) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    latest = {}
    for metric in sorted(MlflowClient().get_metric_history(run_id, "loss"), key=lambda m: m.timestamp):
        latest[metric.step] = metric.value
    return dict(sorted(latest.items()))


def weights(store, key_prefix: str) -> dict:
    from safetensors.torch import load

    return load(store.get(BUCKET, key_prefix + "model.safetensors"))


def test_trains_exports_and_resumes_bit_exactly(seeded, tracking_uri):
    straight = run("straight", 1, seeded, tracking_uri)
    result = straight.storage.get_json("result.json")
    reference = losses(result["mlflowRunId"])
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert reference[STEPS] < reference[1]  # it learns
    assert result["registeredModelUri"] == "models:/tiny-pretrained/1"
    assert result["registeredEmaModelUri"] == "models:/tiny-pretrained-ema/1"
    prefix = "ns/TrainingJob/straight/outputs/"
    final, ema = weights(seeded, prefix + "model/"), weights(seeded, prefix + "ema-model/")
    assert final.keys() == ema.keys() and any(not torch.equal(final[k], ema[k]) for k in final)
    # retention in the object store: only the last two committed checkpoints remain, each with its EMA shard
    checkpointer = Checkpointer(straight.storage)
    assert checkpointer.committed() == [STEPS - EVERY, STEPS]
    assert {k.split("/")[4] for k in seeded.list(BUCKET, "ns/TrainingJob/straight/checkpoints/")} == \
        {f"step-{STEPS - EVERY}", f"step-{STEPS}"}
    manifest = checkpointer.manifest(STEPS)
    assert {".metadata", "rng_state_0.pt"} <= set(manifest["filesByRank"]["0"])
    # every checkpoint's stall (the step loop blocked) and commit (in the background) are measured and reported
    assert [c["step"] for c in result["checkpoints"]] == list(range(EVERY, STEPS + 1, EVERY))
    assert all(c["stallSeconds"] >= 0 and c["commitSeconds"] > 0 and c["bytes"] > 0 for c in result["checkpoints"])
    from mlflow.tracking import MlflowClient

    stalls = MlflowClient().get_metric_history(result["mlflowRunId"], "checkpoint_stall_seconds")
    assert sorted(m.step for m in stalls) == list(range(EVERY, STEPS + 1, EVERY))

    with pytest.raises(Killed):  # killed after step 6, inside the EMA phase (it starts at step 4)
        run("resumed", 1, seeded, tracking_uri, KilledAfter, kill_after=6)
    resumed = run("resumed", 2, seeded, tracking_uri)
    again = resumed.storage.get_json("result.json")
    assert again["resumedFrom"] == f"s3://{BUCKET}/ns/TrainingJob/resumed/checkpoints/step-6/"
    assert losses(again["mlflowRunId"]) == reference  # exact equality, not a tolerance
    prefix = "ns/TrainingJob/resumed/outputs/"
    for key, value in weights(seeded, prefix + "model/").items():
        assert torch.equal(value, final[key]), key
    for key, value in weights(seeded, prefix + "ema-model/").items():
        assert torch.equal(value, ema[key]), key


class DiesBeforeItsManifest(Checkpointer):
    """The background commit of step 4 dies after every file is up, right before the manifest (a crash there)."""

    def write_manifest(self, step: int, manifest: dict) -> None:
        if step == 4:
            raise Killed()
        super().write_manifest(step, manifest)


class CommitDiesAt4(Pretraining):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.checkpointer.__class__ = DiesBeforeItsManifest
        self.saved: list[int] = []

    def save(self, step: int) -> None:
        self.saved.append(step)
        super().save(step)


def test_a_checkpoint_whose_background_write_dies_is_never_committed_and_fails_the_next_save(seeded, tracking_uri):
    storage = WorkloadStorage(context("torn", 1, tracking_uri), seeded)
    job = CommitDiesAt4(storage.context, spec(), storage, rank=0, heartbeat=None)
    with pytest.raises(Killed):
        run_to_end(job)
    # the step loop went on after handing step 4 over, and the next checkpoint raised the background error
    assert job.saved == [2, 4, 6]
    checkpointer = Checkpointer(storage)
    assert checkpointer.committed() == [2]  # step 4's files are all up, but without a manifest it never counts
    assert any(key.startswith("ns/TrainingJob/torn/checkpoints/step-4/")
               for key in seeded.list(BUCKET, "ns/TrainingJob/torn/checkpoints/"))
    resumed = run("torn", 2, seeded, tracking_uri)
    assert resumed.resumed_from == f"s3://{BUCKET}/ns/TrainingJob/torn/checkpoints/step-2/"
    assert checkpointer.committed() == [STEPS - EVERY, STEPS]
