"""The Trainer callback commits checkpoints in the background, one at a time, and never reports Done before the
last one is durable; an upload failure surfaces in the training thread."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from kubeforge_workloads.common.storage import WorkloadStorage
from tests.unit.workloads.conftest import finetune_context
from tests.unit.workloads.test_checkpoint import GatedCheckpointer

pytest.importorskip("transformers")

from kubeforge_workloads.finetune.callback import make_callback  # noqa: E402


@pytest.fixture
def storage(object_store):
    """A real Checkpointer whose commits wait for the test to let each through (`gate.release()`)."""
    return GatedCheckpointer(WorkloadStorage(finetune_context(attempt=1), object_store))


def save(callback, tmp_path, step: int) -> None:
    local = tmp_path / f"checkpoint-{step}"
    local.mkdir()
    (local / "adapter_model.safetensors").write_bytes(b"w" * step)
    callback.on_save(SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(global_step=step, epoch=0.5), None)


def test_commit_runs_in_the_background_and_train_end_waits_for_it(storage, tmp_path):
    flushed = []
    callback = make_callback(storage, None, rank=0, tokens_per_step=1.0, on_metrics=None,
                             before_commit=lambda: flushed.append(True))
    save(callback, tmp_path, 4)
    assert flushed == [True]  # metrics are flushed before the commit starts
    assert storage.latest() is None  # on_save returned; the commit is still in flight
    storage.gate.release()
    callback.on_train_end(None, None, None)
    assert storage.latest() == 4


def test_the_next_save_waits_for_the_previous_commit(storage, tmp_path):
    callback = make_callback(storage, None, rank=0, tokens_per_step=1.0, on_metrics=None)
    save(callback, tmp_path, 4)
    opener = threading.Timer(0.3, storage.gate.release)
    opener.start()
    save(callback, tmp_path, 8)  # blocks until step 4 is committed
    assert storage.latest() == 4
    storage.gate.release()
    callback.on_train_end(None, None, None)
    assert storage.latest() == 8


def test_an_upload_failure_is_raised_in_the_training_thread(storage, tmp_path):
    callback = make_callback(storage, None, rank=0, tokens_per_step=1.0, on_metrics=None)
    storage.fail_with = IOError("S3 said no")
    save(callback, tmp_path, 4)
    storage.gate.release()
    with pytest.raises(IOError, match="S3 said no"):
        callback.on_train_end(None, None, None)
    assert storage.latest() is None
