"""A VectorIndex sync's costs: a re-sync after a few small documents changed runs in the driver without starting
Ray, while a first build always runs on Ray Data; a re-sync starts loading the model as soon as the listing shows a
changed document; a re-sync downloads only the objects whose ETag or size changed
and copies the rest from the current version; the read stage makes one S3 client per process; the embedding actor
chunks its own documents with as many torch threads as CPUs it holds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kubeforge.api.vectorindex import VectorIndexSpec
from kubeforge.api.workload import WorkloadContext
from kubeforge_workloads.index import build
from tests.unit.workloads.conftest import BUCKET

DOCUMENTS = {
    "docs/ray.md": "# Ray\n\nRay schedules tasks and actors across a cluster of machines.\n",
    "docs/faiss.txt": "Faiss searches dense vectors with flat and HNSW indexes.\n",
    "docs/kopf.html": "<html><body><p>kopf runs Kubernetes operators written in Python.</p></body></html>",
}


def _context(generation: int) -> WorkloadContext:
    spec = {"source": {"uri": f"s3://{BUCKET}/docs/"}, "chunking": {"strategy": "tokens", "size": 64, "overlap": 8},
            "index": {"type": "flat"}}
    return WorkloadContext(kind="VectorIndex", namespace="ns", name="vi", uid="u", generation=generation, attempt=1,
                           spec=spec, storage={"bucket": BUCKET, "prefix": "ns/VectorIndex/vi"},
                           mlflow={"experiment": "ns/VectorIndex", "run_name": "vi"})


class RecordingStore:
    """The source store the read stage uses, remembering which keys it downloaded."""

    def __init__(self, store):
        self.store, self.keys = store, []

    def get(self, bucket: str, key: str):
        self.keys.append(key)
        return self.store.get(bucket, key)


def _sync(context, storage, tmp_path):
    from kubeforge_workloads.common.heartbeat import Heartbeat

    spec = VectorIndexSpec.model_validate(context.spec)
    return build.sync(context, spec, storage, Heartbeat(lambda progress: None, 1), tmp_path)


def _vectors(store, storage, version: int) -> dict[str, list]:
    import io

    import pyarrow.parquet as pq

    raw = store.get(BUCKET, storage.prefix.index_version_key(version) + "chunks.parquet")
    table = pq.read_table(io.BytesIO(raw))
    return dict(zip(table.column("chunk_id").to_pylist(), table.column("vector").to_pylist()))


def test_a_small_resync_embeds_in_the_driver_and_reads_only_the_changed_object(object_store, tmp_path,
                                                                              monkeypatch):
    from kubeforge_workloads.common.storage import WorkloadStorage

    def no_ray(cpus):
        raise AssertionError("a re-sync of one small changed document started Ray")

    monkeypatch.setattr(build, "init_ray", no_ray)
    reads = RecordingStore(object_store)
    monkeypatch.setattr(build, "_source_store", lambda: reads)
    for key, text in DOCUMENTS.items():
        object_store.put(BUCKET, key, text.encode())
    storage = WorkloadStorage(_context(1), object_store)

    with monkeypatch.context() as first_build:  # a first build runs on Ray Data; here, to keep the test small, not
        first_build.setattr(build, "embeds_in_driver", lambda previous, to_read: True)
        first = _sync(_context(1), storage, tmp_path / "one")
    assert (first["version"], first["documents"], first["sync"]["embeddedDocuments"]) == (1, 3, 3)
    assert sorted(reads.keys) == sorted(DOCUMENTS)

    reads.keys.clear()
    object_store.put(BUCKET, "docs/faiss.txt", b"Faiss searches dense vectors; HNSW trades recall for speed.\n")
    second = _sync(_context(2), storage, tmp_path / "two")
    assert reads.keys == ["docs/faiss.txt"]
    assert (second["version"], second["sync"]["embeddedDocuments"], second["sync"]["reusedDocuments"]) == (2, 1, 2)
    before, after = _vectors(object_store, storage, 1), _vectors(object_store, storage, 2)
    for chunk_id in ("ray.md#c0", "kopf.html#c0"):
        assert after[chunk_id] == before[chunk_id]
    assert after["faiss.txt#c0"] != before["faiss.txt#c0"]


def test_a_resync_loads_the_model_from_the_first_changed_object_listed_and_a_sync_without_one_never(
        object_store, tmp_path, monkeypatch):
    from kubeforge_workloads.common.storage import WorkloadStorage

    events = []
    list_sources, preload_model = build.list_sources, build.preload_model

    def listing(*args):
        events.append("listing")
        found = list_sources(*args)
        events.append("listed")
        return found

    def preload(spec):
        events.append("model")
        return preload_model(spec)

    monkeypatch.setattr(build, "list_sources", listing)
    monkeypatch.setattr(build, "preload_model", preload)
    monkeypatch.setattr(build, "embeds_in_driver", lambda previous, to_read: True)  # the first build too: no Ray
    for key, text in DOCUMENTS.items():
        object_store.put(BUCKET, key, text.encode())
    storage = WorkloadStorage(_context(1), object_store)
    _sync(_context(1), storage, tmp_path / "one")
    assert events == ["listing", "listed"]  # nothing to reuse: no re-sync to speed up

    events.clear()
    assert _sync(_context(2), storage, tmp_path / "two")["unchanged"]
    assert events == ["listing", "listed"]

    events.clear()
    object_store.put(BUCKET, "docs/faiss.txt", b"Faiss searches dense vectors; HNSW trades recall for speed.\n")
    assert _sync(_context(3), storage, tmp_path / "three")["sync"]["embeddedDocuments"] == 1
    assert events == ["listing", "model", "listed"]

    events.clear()
    object_store.client.delete_object(Bucket=BUCKET, Key="docs/ray.md")
    deleted = _sync(_context(4), storage, tmp_path / "four")
    sync = deleted["sync"]
    assert (deleted["documents"], sync["deletedDocuments"], sync["embeddedDocuments"]) == (2, 1, 0)
    assert events == ["listing", "listed"]


def test_the_read_stage_makes_one_s3_client_per_process(object_store, monkeypatch):
    import kubeforge.storage.objectstore as objectstore

    made = []

    class CountingStore(objectstore.S3ObjectStore):
        def __init__(self, *args, **kwargs):
            made.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(objectstore, "S3ObjectStore", CountingStore)
    monkeypatch.setattr(build, "_stores", {})
    object_store.put(BUCKET, "docs/a.txt", b"alpha")
    batch = {"key": ["docs/a.txt"], "relative": ["a.txt"], "format": ["txt"]}
    for _ in range(3):
        rows = build.read_and_parse(batch, BUCKET, "text", None, ())
        assert rows["text"] == ["alpha"]
    assert len(made) == 1


@pytest.mark.parametrize("objects,cpus,expected", [(10, 3, 8), (400, 3, 67), (4000, 2, 1000)])
def test_read_tasks_are_a_few_per_cpu_not_one_per_eight_documents(objects, cpus, expected):
    assert build.read_batch_size(objects, cpus) == expected


@pytest.mark.parametrize("objects,actors,expected", [(50, 1, 128), (1000, 1, 250), (2000, 1, 500), (7500, 1, 512),
                                                     (2000, 4, 128), (7500, 4, 469)])
def test_an_embedding_actor_gets_calls_as_large_as_its_share_allows_up_to_512_documents(objects, actors, expected):
    assert build.documents_per_call(objects, actors) == expected


def test_the_embedding_actor_chunks_its_documents_on_as_many_torch_threads_as_cpus_it_holds():
    import torch

    threads = torch.get_num_threads()
    text = " ".join(f"Sentence number {i} talks about vector search." for i in range(12))
    documents = {"object": np.array(["a.txt", "b.txt", "bad.txt", "c.txt"]),
                 "document_id": np.array(["a.txt", "b.txt", "bad.txt", "c.txt"]),
                 "text": np.array([text, "Unchanged since the last version.", "", "Saved by a killed attempt."]),
                 "metadata": np.array([json.dumps({"source": "a.txt"})] + ["{}"] * 3),
                 "anchors": np.array(["[]"] * 4), "document_hash": np.array(["h", "hb", "", "hc"]),
                 "cause": np.array(["", "", "empty", ""]), "message": np.array(["", "", "bad.txt is empty", ""])}
    try:
        torch.set_num_threads(2)
        actor = build.DocumentEmbedder("all-MiniLM-L6-v2", "tokens", 16, 2, 8, True, "cpu", threads=1,
                                       skip=frozenset({("b.txt", "hb"), ("c.txt", "hc")}))
        assert torch.get_num_threads() == 1
        out = actor(documents)
    finally:
        torch.set_num_threads(threads)
    chunk = out["ordinal"] >= 0
    count = int(chunk.sum())
    assert count > 3 and set(out["document_id"][chunk]) == {"a.txt"}  # b and c skipped, bad.txt not a document
    assert list(out["ordinal"][chunk]) == list(range(count)) and set(out["chunks_in_document"][chunk]) == {count}
    assert out["vector"].shape == (count + 4, 384) and not out["vector"][~chunk].any()
    # every input row comes back once as a record, with what the driver diffs and reports
    assert list(out["document_id"][~chunk]) == list(documents["document_id"])
    assert list(out["cause"][~chunk]) == ["", "", "empty", ""] and list(out["object"][~chunk])[2] == "bad.txt"
    assert list(out["document_hash"][~chunk]) == ["h", "hb", "", "hc"]


def test_a_first_build_runs_on_ray_data_however_small_and_a_large_change_too():
    from kubeforge_workloads.index.sources import SourceObject

    small = [SourceObject("docs/a.md", "a.md", "e", 100)]
    large = [SourceObject(f"docs/{i}.md", f"{i}.md", "e", 64 * 1024) for i in range(5)]
    current = build.Previous(1, {}, [{"object": "a.md", "etag": "e", "size": 100}], None)
    assert build.embeds_in_driver(current, small)
    assert not build.embeds_in_driver(None, small)  # a first build
    assert not build.embeds_in_driver(build.Previous(1, {}, [], None), small)  # the chunking or model changed
    assert not build.embeds_in_driver(current, large)
