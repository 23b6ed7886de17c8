"""Checkpoints are committed manifest-last; torn ones are never used; progress and failure reports round-trip."""

import pytest

from kubeforge.storage.layout import MANIFEST_FILE
from kubeforge.storage.progress import FailureReport
from kubeforge_workloads.common.heartbeat import Heartbeat
from kubeforge_workloads.common.storage import WorkloadStorage
from tests.unit.workloads.conftest import finetune_context


@pytest.fixture
def storage(object_store):
    return WorkloadStorage(finetune_context(attempt=2), object_store)


def checkpoint_dir(tmp_path, name="ckpt"):
    directory = tmp_path / name
    (directory / "sub").mkdir(parents=True)
    (directory / "adapter_model.safetensors").write_bytes(b"x" * 100)
    (directory / "sub" / "rng_state.pth").write_bytes(b"y" * 7)
    return directory


def test_commit_then_download_round_trips(storage, tmp_path):
    uri = storage.commit_checkpoint(4, 0.5, checkpoint_dir(tmp_path))
    assert uri == "s3://kfbucket/ns/FineTune/ft/checkpoints/step-4/"
    assert storage.latest_checkpoint() == 4
    target = tmp_path / "restored"
    storage.download_checkpoint(4, target)
    assert (target / "adapter_model.safetensors").read_bytes() == b"x" * 100
    assert (target / "sub" / "rng_state.pth").read_bytes() == b"y" * 7


def test_torn_checkpoint_without_manifest_is_ignored(storage, tmp_path):
    storage.commit_checkpoint(4, 0.5, checkpoint_dir(tmp_path))
    committed = storage.commit_checkpoint(8, 1.0, checkpoint_dir(tmp_path, "second"))
    storage.store.client.delete_object(Bucket="kfbucket", Key=committed[len("s3://kfbucket/"):] + MANIFEST_FILE)
    storage.store.put("kfbucket", "ns/FineTune/ft/checkpoints/step-12/adapter_model.safetensors", b"partial")
    assert storage.latest_checkpoint() == 4


def test_download_refuses_a_truncated_file(storage, tmp_path):
    storage.commit_checkpoint(4, 0.5, checkpoint_dir(tmp_path))
    storage.store.put("kfbucket", "ns/FineTune/ft/checkpoints/step-4/adapter_model.safetensors", b"short")
    with pytest.raises(IOError, match="manifest says 100"):
        storage.download_checkpoint(4, tmp_path / "restored")


def test_failure_report_and_heartbeat(storage):
    storage.write_failure(64, "UserError", "bad template", "Traceback ...")
    raw = storage.store.get("kfbucket", "ns/FineTune/ft/attempts/2/failure.json")
    report = FailureReport.model_validate_json(raw)
    assert (report.attempt, report.exit_code, report.reason) == (2, 64, "UserError")
    beat = Heartbeat(storage.write_progress, attempt=2)
    beat.update(phase="Training", step=3, total_steps=10, loss=1.5)
    beat.beat()
    progress = storage.read_progress()
    assert (progress.attempt, progress.phase, progress.step, progress.total_steps, progress.loss) == (2, "Training", 3, 10, 1.5)


def test_commit_includes_files_other_ranks_uploaded(storage, tmp_path):
    """With several Ray Train workers each rank saves its own rng_state_<rank>.pth; the manifest lists all."""
    other = tmp_path / "rank1"
    other.mkdir()
    (other / "rng_state_1.pth").write_bytes(b"r" * 11)
    storage.upload_checkpoint_files(4, other, names=["rng_state_1.pth"])
    assert storage.latest_committed_checkpoint() is None  # uploaded, not committed
    storage.commit_checkpoint(4, 0.5, checkpoint_dir(tmp_path), uploaded_by_others=("rng_state_1.pth",))
    manifest = storage.store.get("kfbucket", "ns/FineTune/ft/checkpoints/step-4/" + MANIFEST_FILE)
    import json

    files = json.loads(manifest)["files"]
    assert files == {"adapter_model.safetensors": 100, "sub/rng_state.pth": 7, "rng_state_1.pth": 11}


def test_commit_refuses_when_another_rank_did_not_upload(storage, tmp_path):
    with pytest.raises(IOError, match=r"rng_state_2.pth"):
        storage.commit_checkpoint(4, 0.5, checkpoint_dir(tmp_path), uploaded_by_others=("rng_state_2.pth",))
    assert storage.latest_committed_checkpoint() is None


def test_parallel_transfers_round_trip_many_files(storage, tmp_path):
    directory = tmp_path / "many"
    directory.mkdir()
    for index in range(20):
        (directory / f"shard-{index:02d}.bin").write_bytes(bytes([index]) * (index + 1))
    storage.commit_checkpoint(6, 1.0, directory)
    restored = tmp_path / "restored"
    storage.download_checkpoint(6, restored)
    assert sorted(p.name for p in restored.iterdir()) == sorted(p.name for p in directory.iterdir())
    assert all((restored / p.name).read_bytes() == p.read_bytes() for p in directory.iterdir())


def test_clear_checkpoint_removes_leftovers_of_an_earlier_attempt(storage, tmp_path):
    storage.store.put("kfbucket", "ns/FineTune/ft/checkpoints/step-4/stale.pt", b"old")
    storage.clear_checkpoint(4)
    storage.commit_checkpoint(4, 0.5, checkpoint_dir(tmp_path))
    assert "stale.pt" not in storage.store.get("kfbucket", "ns/FineTune/ft/checkpoints/step-4/MANIFEST.json").decode()


def test_download_uri_file_prefix_and_missing(storage, tmp_path):
    from kubeforge_workloads.common.errors import UserError
    from kubeforge_workloads.common.storage import download_uri

    store = storage.store
    store.put("kfbucket", "data/train.jsonl", b"{}\n")
    store.put("kfbucket", "models/m/config.json", b"{}")
    store.put("kfbucket", "models/m/sub/w.bin", b"w")
    assert download_uri(store, "s3://kfbucket/data/train.jsonl", tmp_path / "a").read_bytes() == b"{}\n"
    model = download_uri(store, "s3://kfbucket/models/m", tmp_path / "b")
    assert (model / "config.json").exists() and (model / "sub" / "w.bin").read_bytes() == b"w"
    assert (download_uri(store, "s3://kfbucket/models/m/", tmp_path / "c") / "config.json").exists()
    with pytest.raises(UserError, match="does not exist"):
        download_uri(store, "s3://kfbucket/data/missing.jsonl", tmp_path / "d")
