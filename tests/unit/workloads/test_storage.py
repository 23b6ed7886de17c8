"""Progress and failure reports round-trip; URIs download as a file or a prefix, in parallel through boto3's
transfer manager. (Checkpoints: test_checkpoint.py.)"""

import pytest

from kubeforge.storage.progress import FailureReport
from kubeforge_workloads.common.heartbeat import Heartbeat
from kubeforge_workloads.common.storage import WorkloadStorage, upload_tree
from tests.unit.workloads.conftest import finetune_context


@pytest.fixture
def storage(object_store):
    return WorkloadStorage(finetune_context(attempt=2), object_store)


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


def test_upload_tree_sends_every_file_under_its_relative_key(storage, tmp_path):
    directory = tmp_path / "tree"
    (directory / "sub").mkdir(parents=True)
    for index in range(12):
        (directory / ("sub" if index % 2 else ".") / f"f{index}.bin").write_bytes(bytes([index]) * (index + 1))
    assert upload_tree(storage.store.client, directory, "kfbucket", "out/") == 12
    keys = sorted(storage.store.list("kfbucket", "out/"))
    assert keys == sorted(f"out/{'sub/' if i % 2 else ''}f{i}.bin" for i in range(12))
    assert storage.store.get("kfbucket", "out/sub/f11.bin") == bytes([11]) * 12
