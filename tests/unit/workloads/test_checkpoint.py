"""The Checkpointer: every rank's files, the manifest last (in the format the operator reads), torn checkpoints
never used, sizes verified on load, retention in the object store, background commits one at a time, DCP shards."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from kubeforge.storage.layout import MANIFEST_FILE, ResourcePrefix, committed_steps
from kubeforge.storage.progress import CheckpointManifest
from kubeforge_workloads.common.checkpoint import Checkpointer, local_files
from kubeforge_workloads.common.storage import WorkloadStorage
from tests.unit.workloads.conftest import finetune_context

BASE = "ns/FineTune/ft/checkpoints/"


@pytest.fixture
def storage(object_store):
    return WorkloadStorage(finetune_context(attempt=2), object_store)


@pytest.fixture
def checkpointer(storage):
    return Checkpointer(storage)


def checkpoint_dir(tmp_path, name="ckpt"):
    directory = tmp_path / name
    (directory / "sub").mkdir(parents=True)
    (directory / "adapter_model.safetensors").write_bytes(b"x" * 100)
    (directory / "sub" / "rng_state.pth").write_bytes(b"y" * 7)
    return directory


def save_dir(checkpointer, step, directory, epoch=0.5):
    return checkpointer.save(step, {checkpointer.rank: local_files(directory)}, directory, epoch)


def test_save_then_load_round_trips(checkpointer, tmp_path):
    uri = save_dir(checkpointer, 4, checkpoint_dir(tmp_path))
    assert uri == "s3://kfbucket/ns/FineTune/ft/checkpoints/step-4/"
    assert checkpointer.latest() == 4
    target = tmp_path / "restored"
    assert checkpointer.load(4, target) == uri
    assert (target / "adapter_model.safetensors").read_bytes() == b"x" * 100
    assert (target / "sub" / "rng_state.pth").read_bytes() == b"y" * 7


def test_the_manifest_is_what_the_operator_reads(checkpointer, storage, tmp_path):
    save_dir(checkpointer, 4, checkpoint_dir(tmp_path), epoch=1.5)
    raw = storage.store.get("kfbucket", BASE + "step-4/" + MANIFEST_FILE)
    manifest = CheckpointManifest.model_validate_json(raw)  # the operator's model, unchanged
    assert (manifest.step, manifest.epoch, manifest.attempt) == (4, 1.5, 2)
    assert manifest.files == {"adapter_model.safetensors": 100, "sub/rng_state.pth": 7}
    prefix = ResourcePrefix("kfbucket", "ns/FineTune/ft")
    assert committed_steps(prefix, storage.store.list("kfbucket", BASE)) == [4]


def test_torn_checkpoint_without_manifest_is_ignored(checkpointer, storage, tmp_path):
    save_dir(checkpointer, 4, checkpoint_dir(tmp_path))
    save_dir(checkpointer, 8, checkpoint_dir(tmp_path, "second"))
    storage.store.client.delete_object(Bucket="kfbucket", Key=BASE + "step-8/" + MANIFEST_FILE)
    storage.store.put("kfbucket", BASE + "step-12/adapter_model.safetensors", b"partial")
    assert checkpointer.latest() == 4
    with pytest.raises(FileNotFoundError, match="step-8 is not committed"):
        checkpointer.load(8, tmp_path / "restored")


def test_load_refuses_a_truncated_file(checkpointer, storage, tmp_path):
    save_dir(checkpointer, 4, checkpoint_dir(tmp_path))
    storage.store.put("kfbucket", BASE + "step-4/adapter_model.safetensors", b"short")
    with pytest.raises(IOError, match="the manifest says 100"):
        checkpointer.load(4, tmp_path / "restored")


def test_every_rank_contributes_and_the_manifest_lists_all(storage, tmp_path):
    """Rank 1 uploads its RNG state and its shard; rank 0 commits, listing both ranks' files."""
    rank_1 = Checkpointer(storage, rank=1)
    other = tmp_path / "rank1"
    other.mkdir()
    (other / "rng_state_1.pth").write_bytes(b"r" * 11)
    (other / "__1_0.distcp").write_bytes(b"s" * 5)
    rank_1.contribute(4, other, ["rng_state_1.pth", "__1_0.distcp"])
    rank_0 = Checkpointer(storage, rank=0)
    assert rank_0.latest() is None  # contributed, not committed
    own = checkpoint_dir(tmp_path)
    rank_0.save(4, {0: local_files(own), 1: ["rng_state_1.pth", "__1_0.distcp"]}, own, 0.5)
    manifest = rank_0.manifest(4)
    assert manifest["files"] == {"adapter_model.safetensors": 100, "sub/rng_state.pth": 7, "rng_state_1.pth": 11,
                                 "__1_0.distcp": 5}
    assert manifest["filesByRank"] == {"0": ["adapter_model.safetensors", "sub/rng_state.pth"],
                                       "1": ["__1_0.distcp", "rng_state_1.pth"]}
    only_rank_1 = tmp_path / "only-1"
    rank_0.load(4, only_rank_1, ranks=[1])
    assert sorted(p.name for p in only_rank_1.iterdir()) == ["__1_0.distcp", "rng_state_1.pth"]


def test_save_refuses_when_another_rank_did_not_contribute(checkpointer, tmp_path):
    own = checkpoint_dir(tmp_path)
    with pytest.raises(IOError, match=r"rng_state_2.pth"):
        checkpointer.save(4, {0: local_files(own), 2: ["rng_state_2.pth"]}, own)
    assert checkpointer.latest() is None


def test_parallel_transfers_round_trip_many_files(checkpointer, tmp_path):
    directory = tmp_path / "many"
    directory.mkdir()
    for index in range(20):
        (directory / f"shard-{index:02d}.bin").write_bytes(bytes([index]) * (index + 1))
    save_dir(checkpointer, 6, directory)
    restored = tmp_path / "restored"
    checkpointer.load(6, restored)
    assert sorted(p.name for p in restored.iterdir()) == sorted(p.name for p in directory.iterdir())
    assert all((restored / p.name).read_bytes() == p.read_bytes() for p in directory.iterdir())


def test_clear_removes_leftovers_of_an_earlier_attempt(checkpointer, storage, tmp_path):
    storage.store.put("kfbucket", BASE + "step-4/stale.pt", b"old")
    checkpointer.clear(4)
    save_dir(checkpointer, 4, checkpoint_dir(tmp_path))
    assert "stale.pt" not in checkpointer.manifest(4)["files"]


def test_retention_keeps_the_latest_in_the_object_store(storage, tmp_path):
    checkpointer = Checkpointer(storage, keep_latest=2)
    directory = checkpoint_dir(tmp_path)
    storage.store.put("kfbucket", BASE + "step-2/torn.pt", b"a torn leftover below what is kept")
    for step in (4, 8):
        save_dir(checkpointer, step, directory)
    storage.store.put("kfbucket", BASE + "step-16/adapter_model.safetensors", b"being written")
    save_dir(checkpointer, 12, directory)
    checkpointer.wait()  # retention runs on its own thread, after the commit
    assert checkpointer.committed() == [8, 12]
    steps_present = sorted({int(k[len(BASE):].split("/")[0][5:]) for k in storage.store.list("kfbucket", BASE)})
    assert steps_present == [8, 12, 16]  # step-16 (being written, above the newest) is left alone
    assert checkpointer.load(8, tmp_path / "r8")  # what is kept is whole


def test_retention_never_deletes_the_newest(storage, tmp_path):
    checkpointer = Checkpointer(storage, keep_latest=1)
    directory = checkpoint_dir(tmp_path)
    for step in (4, 8):
        save_dir(checkpointer, step, directory)
    checkpointer.wait()
    assert checkpointer.committed() == [8]
    with pytest.raises(ValueError, match="at least 1"):
        Checkpointer(storage, keep_latest=0)


class RetentionRefused(Checkpointer):
    def prune(self) -> list[int]:
        raise IOError("delete refused")


def test_retention_runs_after_the_commit_and_its_error_is_raised_by_wait(storage, tmp_path):
    checkpointer = RetentionRefused(storage, keep_latest=1)
    save_dir(checkpointer, 4, checkpoint_dir(tmp_path))
    assert checkpointer.committed() == [4]  # committed whatever retention does afterwards
    with pytest.raises(IOError, match="delete refused"):
        checkpointer.wait()
    checkpointer.close()


def test_without_keep_latest_every_checkpoint_stays(checkpointer, tmp_path):
    directory = checkpoint_dir(tmp_path)
    for step in (4, 8, 12):
        save_dir(checkpointer, step, directory)
    assert checkpointer.committed() == [4, 8, 12]


class GatedCheckpointer(Checkpointer):
    """A real Checkpointer whose commits wait for the test to let them through, one `gate.release()` per commit: the
    upload is observably in flight, and a later save stays in flight until the test lets it through too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Semaphore(0)
        self.fail_with: Exception | None = None

    def save(self, *args, **kwargs):
        assert self.gate.acquire(timeout=10)
        if self.fail_with:
            raise self.fail_with
        return super().save(*args, **kwargs)


def test_background_saves_run_one_at_a_time_and_close_waits(storage, tmp_path):
    checkpointer = GatedCheckpointer(storage)
    directory = checkpoint_dir(tmp_path)
    committed = []
    checkpointer.save_in_background(4, {0: local_files(directory)}, directory, on_committed=committed.append)
    assert checkpointer.latest() is None  # returned at once; the commit is in flight
    threading.Timer(0.3, checkpointer.gate.release).start()
    checkpointer.save_in_background(8, {0: local_files(directory)}, directory)  # waits for step 4 first
    assert checkpointer.latest() == 4 and committed == [checkpointer.uri(4)]
    checkpointer.gate.release()
    checkpointer.close()
    assert checkpointer.latest() == 8


def test_a_background_failure_is_raised_to_the_caller(storage, tmp_path):
    checkpointer = GatedCheckpointer(storage)
    checkpointer.fail_with = IOError("S3 said no")
    directory = checkpoint_dir(tmp_path)
    checkpointer.save_in_background(4, {0: local_files(directory)}, directory)
    checkpointer.gate.release()
    with pytest.raises(IOError, match="S3 said no"):
        checkpointer.close()
    assert checkpointer.latest() is None


class GatedContributor(Checkpointer):
    """A real Checkpointer whose contributions wait for the test to open a gate: rank 1's upload is in flight."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def contribute(self, *args, **kwargs):
        assert self.gate.wait(10)
        return super().contribute(*args, **kwargs)


def rank_1_files(tmp_path):
    other = tmp_path / "rank1"
    other.mkdir()
    (other / "__1_0.distcp").write_bytes(b"s" * 5)
    (other / "rng_state_1.pt").write_bytes(b"r" * 11)
    return other


def test_a_background_commit_waits_for_contributions_still_uploading(storage, tmp_path):
    """Rank 1 uploads in the background too: rank 0's commit writes the manifest only once rank 1's files are
    all in the object store, and records how long the commit took and how many bytes it committed."""
    rank_1, rank_0 = GatedContributor(storage, rank=1), Checkpointer(storage, rank=0)
    other, own = rank_1_files(tmp_path), checkpoint_dir(tmp_path)
    contributed = threading.Event()
    rank_1.contribute_in_background(4, other, ["__1_0.distcp", "rng_state_1.pt"], on_contributed=contributed.set)
    rank_0.save_in_background(4, {0: local_files(own), 1: ["__1_0.distcp", "rng_state_1.pt"]}, own,
                              contributions_timeout=10)
    time.sleep(0.6)  # rank 0's own files are up by now; rank 1's are not
    assert rank_0.latest() is None and not contributed.is_set()
    rank_1.gate.set()
    rank_1.close()
    assert contributed.is_set()
    rank_0.close()
    assert rank_0.latest() == 4
    assert rank_0.manifest(4)["files"] == {"adapter_model.safetensors": 100, "sub/rng_state.pth": 7,
                                           "__1_0.distcp": 5, "rng_state_1.pt": 11}
    [commit] = rank_0.commits
    assert (commit.step, commit.bytes) == (4, 123) and commit.seconds >= 0.6


def test_a_commit_gives_up_on_a_contribution_that_never_arrives(checkpointer, tmp_path):
    own = checkpoint_dir(tmp_path)
    started = time.monotonic()
    checkpointer.save_in_background(4, {0: local_files(own), 1: ["__1_0.distcp"]}, own, contributions_timeout=0.5)
    with pytest.raises(IOError, match=r"step-4 lacks files other ranks should have contributed: \['__1_0.distcp'\]"):
        checkpointer.close()
    assert 0.5 <= time.monotonic() - started < 5
    assert checkpointer.latest() is None and checkpointer.commits == []


def test_sharded_state_round_trips_through_dcp_and_the_object_store(checkpointer, tmp_path):
    torch = pytest.importorskip("torch")
    from kubeforge_workloads.common.checkpoint import load_sharded, save_sharded

    state = {"model": {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}, "step": torch.tensor(5)}
    written = save_sharded(state, tmp_path / "dcp")
    assert ".metadata" in written and any(name.endswith(".distcp") for name in written)
    checkpointer.save(3, {0: written}, tmp_path / "dcp")
    restored_dir = tmp_path / "restored"
    checkpointer.load(3, restored_dir)
    target = {"model": {"w": torch.zeros(3, 4)}, "step": torch.tensor(0)}
    load_sharded(target, restored_dir)
    assert torch.equal(target["model"]["w"], state["model"]["w"]) and int(target["step"]) == 5
    assert json.loads(json.dumps(checkpointer.manifest(3)["filesByRank"])) == {"0": sorted(written)}


def _fsdp_rank(rank: int, world: int, endpoint: str, workdir: str) -> None:
    """One of two processes (gloo): saves a 2-rank FSDP2 checkpoint through the Checkpointer, then restores it
    into a differently initialised model and writes which object keys it downloaded and whether the restored
    shard equals the saved one."""
    import os
    from pathlib import Path

    import boto3
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from kubeforge.storage.objectstore import S3ObjectStore
    from kubeforge_workloads.common.checkpoint import AsyncShardedSaver, load_sharded

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    dist.init_process_group("gloo", init_method=f"file://{workdir}/rendezvous", rank=rank, world_size=world)
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        downloaded: list[str] = []
        client.meta.events.register("before-parameter-build.s3.GetObject",
                                    lambda params, **_: downloaded.append(params["Key"]))
        checkpointer = Checkpointer(WorkloadStorage(finetune_context(attempt=1), S3ObjectStore(client)), rank=rank)

        def sharded_model(seed: int):
            torch.manual_seed(seed)
            model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
            for layer in model:
                fully_shard(layer)
            return fully_shard(model)

        saved = sharded_model(seed=1)
        expected = {name: tensor.to_local().clone() for name, tensor in saved.state_dict().items()}
        local = Path(workdir) / f"save-{rank}"
        # as the training loop saves: staged, written in the background with DCP's collectives on a gloo group of
        # their own, while the live weights change at once and the training's collectives go on the default group
        saver = AsyncShardedSaver(dist.new_group(backend="gloo"))
        pending = saver.start({"model": saved.state_dict()}, local)
        with torch.no_grad():
            for parameter in saved.parameters():
                parameter.to_local().add_(1.0)
            for _ in range(20):
                dist.all_reduce(torch.ones(4))
        files = pending.result()
        saver.close()
        if rank > 0:  # as the training loop does: every upload in the background, the manifest once all are up
            checkpointer.contribute_in_background(7, local, files)
        files_by_rank: list = [None] * world
        dist.all_gather_object(files_by_rank, files)
        if rank == 0:
            checkpointer.save_in_background(7, dict(enumerate(files_by_rank)), local, contributions_timeout=60)
        checkpointer.close()
        dist.barrier()

        restored = sharded_model(seed=2)
        state = {"model": restored.state_dict()}
        downloaded.clear()
        load_sharded(state, Path(workdir) / f"restore-{rank}", checkpointer.files(7, Path(workdir) /
                                                                                   f"restore-{rank}").fetch)
        restored.load_state_dict(state["model"])
        equal = all(torch.equal(expected[name], tensor.to_local())
                    for name, tensor in restored.state_dict().items())
        Path(workdir, f"result-{rank}.json").write_text(json.dumps({"downloaded": sorted(downloaded),
                                                                     "equal": equal}))
    finally:
        dist.destroy_process_group()


def test_each_rank_restores_only_its_own_fsdp_shards(tmp_path):
    """Two gloo ranks save a sharded FSDP2 checkpoint asynchronously (the weights they get back are the ones of
    the save, not the ones changed while it was written, and the write's collectives on their own group do not
    mix with the training's on the default group); on restore each rank downloads the DCP metadata and its
    own shard file (after the manifest), never the other rank's, and gets its shard back."""
    pytest.importorskip("torch")
    import multiprocessing

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket="kfbucket")
        spawn = multiprocessing.get_context("spawn")
        ranks = [spawn.Process(target=_fsdp_rank, args=(rank, 2, endpoint, str(tmp_path))) for rank in (0, 1)]
        for process in ranks:
            process.start()
        for process in ranks:
            process.join(timeout=120)
            if process.is_alive():
                process.kill()
                process.join()
        assert [process.exitcode for process in ranks] == [0, 0]
    finally:
        server.stop()
    for rank in (0, 1):
        result = json.loads((tmp_path / f"result-{rank}.json").read_text())
        assert result["equal"], f"rank {rank} did not get its shard back"
        assert result["downloaded"] == [BASE + "step-7/" + name
                                        for name in (".metadata", MANIFEST_FILE, f"__{rank}_0.distcp")], result
