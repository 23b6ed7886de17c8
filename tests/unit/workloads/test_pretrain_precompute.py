"""causal-lm precompute (tokenize and pack once into shards in the bucket's precompute cache, reused by later
attempts, re-runs and other resources) and format tokenized-shards (train from such a prefix), over the real S3
protocol (moto in-process) with the seed's real BPE tokenizer."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from kubeforge.api.trainingjob import TrainingJobSpec  # noqa: E402
from kubeforge.api.workload import MlflowContext, StorageContext, WorkloadContext  # noqa: E402
from kubeforge.storage.layout import MANIFEST_FILE, parse_s3_uri, precompute_cache_prefix  # noqa: E402
from kubeforge_workloads.common.errors import DataError, UserError  # noqa: E402
from kubeforge_workloads.common.storage import WorkloadStorage, upload_tree  # noqa: E402
from kubeforge_workloads.pretrain.data import load_sequences  # noqa: E402
from kubeforge_workloads.pretrain.precompute import (  # noqa: E402
    cache_key, dataset_fingerprint, tokenizer_fingerprint, training_sequences)
from tests.unit.workloads.conftest import BUCKET, run_to_end  # noqa: E402

DATASET = f"s3://{BUCKET}/seed/train.jsonl"
TOKENIZER = f"s3://{BUCKET}/seed/tok"


class CountingTokenizer:
    """The real tokenizer, counting how often it tokenizes."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)

    def __len__(self):
        return len(self.inner)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from kubeforge_workloads.seed.build import build_tokenizer

    directory = tmp_path_factory.mktemp("tok")
    build_tokenizer(directory)
    # the workload loads a tokenizer from a model directory, which it recognises by its config.json
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return directory


@pytest.fixture
def seeded(object_store, tokenizer_dir, tmp_path):
    from kubeforge_workloads.seed.build import write_datasets

    upload_tree(object_store.client, tokenizer_dir, BUCKET, "seed/tok/")
    train, _ = write_datasets(tmp_path / "data")
    object_store.client.upload_file(str(train), BUCKET, "seed/train.jsonl")
    return object_store


@pytest.fixture
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return CountingTokenizer(AutoTokenizer.from_pretrained(tokenizer_dir))


def make_spec(**changes) -> TrainingJobSpec:
    spec = {"model": {"config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4}},
            "tokenizer": {"uri": TOKENIZER},
            "dataset": {"uri": DATASET, "textField": "response"},
            "training": {"maxSteps": 6, "globalBatchSize": 4, "microBatchSize": 2, "sequenceLength": 32,
                         "learningRate": 0.01, "checkpointEverySteps": 3, "seed": 5},
            "precompute": {"enabled": True}}
    for path, value in changes.items():
        target = spec
        *parents, leaf = path.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return TrainingJobSpec.model_validate(spec)


def storage_of(store, attempt: int, name: str = "lm", tracking_uri: str = "", spec=None) -> WorkloadStorage:
    context = WorkloadContext(kind="TrainingJob", namespace="ns", name=name, uid=f"uid-{name}", generation=1,
                              attempt=attempt, spec=(spec or make_spec()).model_dump(mode="json", by_alias=True),
                              storage=StorageContext(bucket=BUCKET, prefix=f"ns/TrainingJob/{name}"),
                              mlflow=MlflowContext(experiment="ns/TrainingJob", run_name=name,
                                                   tracking_uri=tracking_uri or None))
    return WorkloadStorage(context, store)


class Barrier:
    def __init__(self, then=None):
        self.calls, self.then = 0, then

    def __call__(self):
        self.calls += 1
        if self.then:
            self.then()


def precomputed(spec, tokenizer, store, cache, attempt=1, name="lm", is_writer=True, wait=None):
    return training_sequences(spec, tokenizer, cache, storage_of(store, attempt, name), is_writer=is_writer,
                              wait=wait or Barrier())


def test_precomputed_sequences_equal_packing_at_start_up_and_live_in_the_bucket_cache(seeded, tokenizer, tmp_path):
    spec = make_spec()
    wait = Barrier()
    data = precomputed(spec, tokenizer, seeded, tmp_path / "a", wait=wait)
    plain = load_sequences(make_spec(precompute=None), tokenizer, tmp_path / "b", seeded)
    assert data.sequences.dtype == torch.int64 and torch.equal(data.sequences, plain)
    assert len(plain) >= 4 and wait.calls == 1 and not data.reused
    bucket, prefix = parse_s3_uri(data.uri)
    key = prefix.rstrip("/").rsplit("/", 1)[-1]
    assert bucket == BUCKET and prefix == precompute_cache_prefix(key)
    manifest = json.loads(seeded.get(BUCKET, prefix + MANIFEST_FILE))
    assert manifest["count"] == len(plain) and manifest["sequenceLength"] == 32 and manifest["dtype"] == "int32"
    assert manifest["tokenizer"] == tokenizer_fingerprint(tokenizer)
    assert manifest["dataset"]["fingerprint"] == dataset_fingerprint(seeded, DATASET)
    assert manifest["createdBy"] == {"kind": "TrainingJob", "namespace": "ns", "name": "lm", "uid": "uid-lm",
                                     "attempt": 1}
    assert [shard["file"] for shard in manifest["shards"]] == ["shard-00000.safetensors"]
    assert sorted(seeded.list(BUCKET, prefix)) == [prefix + MANIFEST_FILE, prefix + "shard-00000.safetensors"]


def test_shards_hold_the_sequences_in_order_across_several_files(seeded, tokenizer, tmp_path, monkeypatch):
    from kubeforge_workloads.pretrain import precompute

    monkeypatch.setattr(precompute, "SHARD_TOKENS", 32 * 3)  # three sequences per shard
    first = precomputed(make_spec(), tokenizer, seeded, tmp_path / "a")
    again = precomputed(make_spec(), tokenizer, seeded, tmp_path / "b", attempt=2)
    _, prefix = parse_s3_uri(first.uri)
    manifest = json.loads(seeded.get(BUCKET, prefix + MANIFEST_FILE))
    assert len(manifest["shards"]) == -(-len(first.sequences) // 3) > 1
    assert again.reused and torch.equal(again.sequences, first.sequences)


def test_a_later_attempt_and_another_resource_reuse_the_shards_without_tokenizing(seeded, tokenizer, tmp_path):
    spec = make_spec()
    first = precomputed(spec, tokenizer, seeded, tmp_path / "a")
    assert tokenizer.calls > 0
    for attempt, name in ((2, "lm"), (1, "lm-rerun")):
        tokenizer.calls = 0
        wait = Barrier()
        again = precomputed(spec, tokenizer, seeded, tmp_path / f"{name}-{attempt}", attempt=attempt, name=name,
                            wait=wait)
        assert tokenizer.calls == 0 and wait.calls == 1
        assert again.reused and again.uri == first.uri and torch.equal(again.sequences, first.sequences)


def test_other_ranks_wait_for_the_writer_then_read_its_shards(seeded, tokenizer, tmp_path):
    spec = make_spec()
    writer = {}

    def the_writer_finishes():
        writer["data"] = precomputed(spec, tokenizer, seeded, tmp_path / "rank0")

    reader_tokenizer = CountingTokenizer(tokenizer.inner)
    wait = Barrier(then=the_writer_finishes)
    reader = precomputed(spec, reader_tokenizer, seeded, tmp_path / "rank1", is_writer=False, wait=wait)
    assert wait.calls == 1 and reader_tokenizer.calls == 0 and not reader.reused
    assert torch.equal(reader.sequences, writer["data"].sequences)


def test_the_key_follows_dataset_tokenizer_and_sequence_length_but_not_training_settings(seeded, tokenizer,
                                                                                        tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    dataset_fp, tokenizer_fp = dataset_fingerprint(seeded, DATASET), tokenizer_fingerprint(tokenizer)
    base = cache_key(make_spec(), dataset_fp, tokenizer_fp)
    assert base == cache_key(make_spec(**{"training.learningRate": 0.5, "training.globalBatchSize": 8,
                                          "training.seed": 9, "dataset.shuffleSeed": 3}), dataset_fp, tokenizer_fp)
    assert cache_key(make_spec(**{"training.sequenceLength": 64}), dataset_fp, tokenizer_fp) != base
    assert cache_key(make_spec(**{"dataset.textField": "prompt"}), dataset_fp, tokenizer_fp) != base
    other = AutoTokenizer.from_pretrained(tokenizer_dir)
    other.add_tokens(["kubeforge"])
    assert tokenizer_fingerprint(other) != tokenizer_fp
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(tokenizer_dir)) == tokenizer_fp
    assert cache_key(make_spec(), dataset_fp, tokenizer_fingerprint(other)) != base
    # the same bytes uploaded again keep the key; changed bytes change it
    seeded.put(BUCKET, "seed/train.jsonl", seeded.get(BUCKET, "seed/train.jsonl"))
    assert dataset_fingerprint(seeded, DATASET) == dataset_fp
    seeded.put(BUCKET, "seed/train.jsonl", seeded.get(BUCKET, "seed/train.jsonl") + b'{"response": "more"}\n')
    changed = dataset_fingerprint(seeded, DATASET)
    assert changed != dataset_fp and cache_key(make_spec(), changed, tokenizer_fp) != base
    # end to end: another sequence length is another cache, computed with the tokenizer
    first = precomputed(make_spec(), tokenizer, seeded, tmp_path / "a")
    tokenizer.calls = 0
    longer = precomputed(make_spec(**{"training.sequenceLength": 64}), tokenizer, seeded, tmp_path / "b")
    assert longer.uri != first.uri and not longer.reused and tokenizer.calls > 0
    assert longer.sequences.shape[1] == 64


def test_a_torn_cache_without_its_manifest_is_recomputed(seeded, tokenizer, tmp_path):
    first = precomputed(make_spec(), tokenizer, seeded, tmp_path / "a")
    _, prefix = parse_s3_uri(first.uri)
    seeded.client.delete_object(Bucket=BUCKET, Key=prefix + MANIFEST_FILE)  # died between shards and manifest
    tokenizer.calls = 0
    again = precomputed(make_spec(), tokenizer, seeded, tmp_path / "b", attempt=2)
    assert not again.reused and tokenizer.calls > 0 and torch.equal(again.sequences, first.sequences)
    assert json.loads(seeded.get(BUCKET, prefix + MANIFEST_FILE))["createdBy"]["attempt"] == 2


def test_tokenized_shards_read_a_cache_prefix_and_check_its_sequence_length(seeded, tokenizer, tmp_path):
    first = precomputed(make_spec(), tokenizer, seeded, tmp_path / "a")
    tokenizer.calls = 0
    shards_spec = make_spec(**{"dataset.uri": first.uri.rstrip("/"), "dataset.format": "tokenized-shards",
                               "precompute": None})
    wait = Barrier()
    data = training_sequences(shards_spec, tokenizer, tmp_path / "b", storage_of(seeded, 1, "from-shards"),
                              is_writer=True, wait=wait)
    assert torch.equal(data.sequences, first.sequences) and tokenizer.calls == 0 and wait.calls == 0
    assert data.uri == first.uri and data.reused

    wrong = make_spec(**{"dataset.uri": first.uri, "dataset.format": "tokenized-shards",
                         "training.sequenceLength": 64})
    with pytest.raises(UserError) as raised:
        training_sequences(wrong, tokenizer, tmp_path / "c", storage_of(seeded, 1, "wrong"), is_writer=True,
                           wait=Barrier())
    assert str(raised.value) == (f"spec.dataset.uri {first.uri} holds sequences of 32 tokens but "
                                 "spec.training.sequenceLength is 64: set spec.training.sequenceLength to 32 or "
                                 "point spec.dataset.uri at shards packed for 64 tokens")


def test_tokenized_shards_refuse_a_prefix_without_a_manifest_and_another_tokenizers_ids(seeded, tokenizer, tmp_path):
    first = precomputed(make_spec(), tokenizer, seeded, tmp_path / "a")
    torn = f"s3://{BUCKET}/seed/torn/"
    _, prefix = parse_s3_uri(first.uri)
    seeded.put(BUCKET, "seed/torn/shard-00000.safetensors", seeded.get(BUCKET, prefix + "shard-00000.safetensors"))
    spec = make_spec(**{"dataset.uri": torn, "dataset.format": "tokenized-shards"})
    with pytest.raises(UserError, match=r"^spec.dataset.uri s3://kfbucket/seed/torn/ holds no MANIFEST.json"):
        training_sequences(spec, tokenizer, tmp_path / "b", storage_of(seeded, 1), is_writer=True, wait=Barrier())

    class Smaller(CountingTokenizer):
        def __len__(self):
            return 10

    shards = make_spec(**{"dataset.uri": first.uri, "dataset.format": "tokenized-shards"})
    with pytest.raises(UserError, match=r"holds token id \d+ but the tokenizer of spec.tokenizer.uri has only 10"):
        training_sequences(shards, Smaller(tokenizer.inner), tmp_path / "c", storage_of(seeded, 1), is_writer=True,
                           wait=Barrier())


def test_preflight_accepts_precompute_and_checks_tokenized_shards(seeded, tokenizer, tmp_path):
    from kubeforge_workloads.pretrain.driver import preflight

    preflight(make_spec(), storage_of(seeded, 1))  # precompute on: no refusal any more
    first = precomputed(make_spec(), tokenizer, seeded, tmp_path / "a")
    good = make_spec(**{"dataset.uri": first.uri, "dataset.format": "tokenized-shards"})
    preflight(good, storage_of(seeded, 1, spec=good))
    for changes, message in (
            ({"dataset.uri": f"s3://{BUCKET}/seed/nothing/"},
             f"spec.dataset.uri s3://{BUCKET}/seed/nothing/ holds no MANIFEST.json"),
            ({"training.sequenceLength": 16},
             f"spec.dataset.uri {first.uri} holds sequences of 32 tokens but spec.training.sequenceLength is 16")):
        bad = make_spec(**{"dataset.uri": first.uri, "dataset.format": "tokenized-shards", **changes})
        with pytest.raises(UserError) as raised:
            preflight(bad, storage_of(seeded, 1, spec=bad))
        assert str(raised.value).startswith(message)


def run_loop(name: str, spec, store, tracking_uri, tokenizer_calls: list):
    from kubeforge_workloads.pretrain.train import Pretraining

    class Counted(Pretraining):
        def load_tokenizer(self):
            counting = CountingTokenizer(super().load_tokenizer())
            tokenizer_calls.append(counting)
            return counting

    storage = storage_of(store, 1, name, tracking_uri, spec=spec)
    return run_to_end(Counted(storage.context, spec, storage, rank=0, heartbeat=None))


def loop_losses(run_id: str) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    return {m.step: m.value for m in sorted(MlflowClient().get_metric_history(run_id, "loss"),
                                            key=lambda m: m.timestamp)}


def test_training_with_and_without_precompute_gives_identical_losses(seeded, tracking_uri):
    plain_calls, cached_calls, again_calls = [], [], []
    plain = run_loop("plain", make_spec(precompute=None), seeded, tracking_uri, plain_calls)
    cached = run_loop("cached", make_spec(), seeded, tracking_uri, cached_calls)
    again = run_loop("again", make_spec(), seeded, tracking_uri, again_calls)
    plain_result, cached_result = plain.storage.get_json("result.json"), cached.storage.get_json("result.json")
    again_result = again.storage.get_json("result.json")
    reference = loop_losses(plain_result["mlflowRunId"])
    assert sorted(reference) == list(range(1, 7))
    assert loop_losses(cached_result["mlflowRunId"]) == reference == loop_losses(again_result["mlflowRunId"])
    assert "tokenizedShards" not in plain_result
    assert cached_result["tokenizedShards"]["reused"] is False
    assert again_result["tokenizedShards"] == {"uri": cached_result["tokenizedShards"]["uri"], "reused": True}
    assert cached_calls[0].calls > 0 and again_calls[0].calls == 0


@pytest.mark.parametrize("name", ["../escaped.safetensors", "nested/shard.safetensors", "..", ""])
def test_a_manifest_naming_a_shard_outside_its_prefix_is_refused_before_anything_is_written(seeded, tokenizer,
                                                                                          tmp_path, name):
    first = precomputed(make_spec(), tokenizer, seeded, tmp_path / "a")
    _, prefix = parse_s3_uri(first.uri)
    manifest = json.loads(seeded.get(BUCKET, prefix + "MANIFEST.json"))
    manifest["shards"][0]["file"] = name
    seeded.put(BUCKET, "seed/hostile/MANIFEST.json", json.dumps(manifest).encode())
    spec = make_spec(**{"dataset.uri": f"s3://{BUCKET}/seed/hostile/", "dataset.format": "tokenized-shards"})
    local = tmp_path / "b" / "cache"
    with pytest.raises(DataError, match=r"lists shard file .*: a shard is a plain file name next to its manifest"):
        training_sequences(spec, tokenizer, local, storage_of(seeded, 1), is_writer=True, wait=Barrier())
    assert not list((tmp_path / "b").rglob("escaped*"))
