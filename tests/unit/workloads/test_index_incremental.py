"""Incremental index updates: a sync grows the previous version's faiss index with its new vectors and leaves
tombstones for deleted or changed chunks instead of rebuilding; queries must answer exactly as a full rebuild over
the same chunks would, and a reader holding the previous version must not notice."""

from __future__ import annotations

import numpy as np
import pytest

from kubeforge.api.vectorindex import VectorIndexSpec
from kubeforge.api.workload import WorkloadContext
from kubeforge_workloads.index import build, engine
from kubeforge_workloads.index.incremental import REBUILD_TOMBSTONE_FRACTION, update_index
from tests.unit.workloads.conftest import BUCKET


def _clustered(n: int, seed: int, dims: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(10, dims))
    return (centers[rng.integers(0, 10, n)] + 0.3 * rng.normal(size=(n, dims))).astype(np.float32)


def _answers(index, vector_ids, chunk_ids, queries, tombstones, k=10):
    """chunk ids and scores of the k best live chunks per query, through the engine as the query library uses it."""
    row_of = {int(v): r for r, v in enumerate(vector_ids)}
    scores, ids = engine.search(index, queries, k, "cosine", 256, excluded=tombstones if len(tombstones) else None)
    return ([[chunk_ids[row_of[int(i)]] for i in row if i >= 0] for row in ids],
            [row[row > -np.inf] for row in scores])


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_an_updated_index_answers_as_a_full_rebuild_over_the_same_chunks(index_type):
    import faiss

    before = {f"c{i}": v for i, v in enumerate(_clustered(400, 0))}
    first_ids = sorted(before)
    first = update_index(engine.prepare(np.stack([before[c] for c in first_ids]), "cosine"),
                         np.full(len(first_ids), -1), None, "cosine", index_type, 16, 100)
    assert first.mode == "rebuild" and first.vector_ids.tolist() == list(range(len(first_ids)))
    id_of = dict(zip(first_ids, first.vector_ids))

    after = dict(before)
    for gone in first_ids[::40]:  # 10 deleted
        del after[gone]
    changed = first_ids[5::50]  # 8 changed: new vectors under the same chunk id
    for chunk, vector in zip(changed, _clustered(len(changed), 1)):
        after[chunk] = vector
    for i, vector in enumerate(_clustered(12, 2)):  # 12 added
        after[f"n{i}"] = vector
    ids = sorted(after)
    reused = np.array([id_of[c] if c in id_of and c not in changed else -1 for c in ids])
    stored = engine.prepare(np.stack([after[c] for c in ids]), "cosine")
    previous = faiss.deserialize_index(faiss.serialize_index(first.index))  # as read from version 1's file
    grown = update_index(stored, reused, previous, "cosine", index_type, 16, 100)
    assert grown.mode == "incremental" and grown.index.ntotal == 400 + len(changed) + 12
    assert sorted(grown.tombstones.tolist()) == sorted(int(id_of[c]) for c in first_ids[::40] + changed)
    assert grown.vector_ids[reused >= 0].tolist() == reused[reused >= 0].tolist()  # reused chunks keep their ids

    rebuilt = update_index(stored, np.full(len(ids), -1), None, "cosine", index_type, 16, 100)
    queries = np.concatenate([stored[::7], engine.prepare(np.stack([before[c] for c in changed]), "cosine")])
    # A tombstone in an answer would be a KeyError in _answers: deleted and replaced vectors are never returned.
    got_ids, got_scores = _answers(grown.index, grown.vector_ids, ids, queries, grown.tombstones)
    want_ids, want_scores = _answers(rebuilt.index, rebuilt.vector_ids, ids, queries, rebuilt.tombstones)
    if index_type == "flat":  # exact search: the very same answers
        assert got_ids == want_ids
        np.testing.assert_allclose(np.concatenate(got_scores), np.concatenate(want_scores), rtol=1e-6)
    else:  # approximate (either graph may leave a node unreachable): as close to exact as the rebuild
        exact = [[ids[i] for i in row] for row in engine._exact(stored, queries, 10, "cosine")[1]]
        agree = lambda answers: np.mean([len(set(a) & set(e)) / 10 for a, e in zip(answers, exact)])  # noqa: E731
        assert agree(got_ids) >= min(0.99, agree(want_ids) - 0.01)
    recall, _ = engine.recall_at_k(grown.index, stored, "cosine", 10, 200, 64, excluded=grown.tombstones)
    assert recall >= 0.98


def test_past_the_tombstone_share_the_index_is_rebuilt_with_ids_from_zero():
    vectors = engine.prepare(_clustered(100, 0), "cosine")
    first = update_index(vectors, np.full(100, -1), None, "cosine", "hnsw", 16, 100)
    keep = int(100 * (1 - REBUILD_TOMBSTONE_FRACTION)) - 1  # one tombstone more than the share allows
    grown = update_index(vectors[:keep], np.arange(keep), first.index, "cosine", "hnsw", 16, 100)
    assert grown.mode == "rebuild" and grown.index.ntotal == keep and len(grown.tombstones) == 0
    assert grown.vector_ids.tolist() == list(range(keep))
    with pytest.raises(ValueError):  # a reused id the previous index never held
        update_index(vectors[:2], np.array([0, 100]), first.index, "cosine", "hnsw", 16, 100)


DOCUMENTS = {
    "ray.md": "# Ray\n\nRay schedules tasks and actors across a cluster of machines.\n",
    "faiss.txt": "Faiss searches dense vectors with flat and HNSW indexes.\n",
    "kopf.html": "<html><body><p>kopf runs Kubernetes operators written in Python.</p></body></html>",
    "moto.txt": "moto emulates Amazon S3 in a local process for tests.\n",
    "mlflow.md": "# MLflow\n\nMLflow records runs, metrics and registered models.\n",
}
QUESTIONS = ["Which library searches vectors?", "How are Kubernetes operators written?",
             "What emulates S3 for tests?", "Where are metrics of runs recorded?", "What schedules actors?",
             "What is new in the changelog?"]


def _context(name: str, generation: int, source: str) -> WorkloadContext:
    spec = {"source": {"uri": f"s3://{BUCKET}/{source}"}, "chunking": {"strategy": "tokens", "size": 64,
                                                                         "overlap": 8},
            "index": {"type": "hnsw", "hnsw": {"efSearch": 64}}}
    return WorkloadContext(kind="VectorIndex", namespace="ns", name=name, uid=name, generation=generation, attempt=1,
                           spec=spec, storage={"bucket": BUCKET, "prefix": f"ns/VectorIndex/{name}"},
                           mlflow={"experiment": "ns/VectorIndex", "run_name": name})


def _sync(context, object_store, tmp_path):
    from kubeforge_workloads.common.heartbeat import Heartbeat
    from kubeforge_workloads.common.storage import WorkloadStorage

    spec = VectorIndexSpec.model_validate(context.spec)
    return build.sync(context, spec, WorkloadStorage(context, object_store), Heartbeat(lambda progress: None, 1),
                      tmp_path)


def _hits(index) -> list[list[tuple[str, float]]]:
    return [[(hit.chunk_id, round(hit.score, 4)) for hit in index.search(q, k=4)] for q in QUESTIONS]


def test_a_resync_grows_the_index_answers_as_a_rebuild_and_a_reader_of_the_previous_version_keeps_working(
        object_store, tmp_path, monkeypatch):
    from kubeforge_workloads.index.query import open_index
    from kubeforge_workloads.index.versions import download_version, read_manifest

    from kubeforge_workloads.index import incremental

    # Small documents embed in the driver; the first build too here, to keep the test free of Ray.
    monkeypatch.setattr(build, "embeds_in_driver", lambda previous, to_read: True)
    # 2 tombstones among 7 vectors: past the default share, which a corpus of five documents cannot stay under.
    monkeypatch.setattr(incremental, "REBUILD_TOMBSTONE_FRACTION", 0.5)
    for key, text in DOCUMENTS.items():
        object_store.put(BUCKET, f"docs/{key}", text.encode())
    first = _sync(_context("vi", 1, "docs/"), object_store, tmp_path / "one")
    assert first["indexUpdate"] == "rebuild"
    held = open_index(f"s3://{BUCKET}/ns/VectorIndex/vi", 1, object_store, tmp_path / "cache")
    held_before = _hits(held)

    object_store.put(BUCKET, "docs/faiss.txt", b"Faiss builds HNSW graphs; usearch is another vector engine.\n")
    object_store.client.delete_object(Bucket=BUCKET, Key="docs/moto.txt")
    object_store.put(BUCKET, "docs/changelog.md", b"# Changelog\n\nVersion 2 adds incremental index updates.\n")
    second = _sync(_context("vi", 2, "docs/"), object_store, tmp_path / "two")
    manifest = read_manifest(object_store, held.prefix, 2)
    assert second["indexUpdate"] == "incremental"
    assert manifest["vectors"]["total"] == first["chunks"] + second["sync"]["embeddedChunks"]
    assert manifest["vectors"]["tombstones"] == 2  # the old faiss.txt and moto.txt chunks
    current = open_index(f"s3://{BUCKET}/ns/VectorIndex/vi", 2, object_store, tmp_path / "cache")
    answers = _hits(current)
    assert not any(chunk.startswith("moto.txt") for row in answers for chunk, _ in row)

    # The same documents indexed from scratch under another resource: the same answers.
    for key in ("ray.md", "kopf.html", "mlflow.md"):
        object_store.put(BUCKET, f"fresh/{key}", DOCUMENTS[key].encode())
    object_store.put(BUCKET, "fresh/faiss.txt", b"Faiss builds HNSW graphs; usearch is another vector engine.\n")
    object_store.put(BUCKET, "fresh/changelog.md", b"# Changelog\n\nVersion 2 adds incremental index updates.\n")
    rebuilt = _sync(_context("fresh", 1, "fresh/"), object_store, tmp_path / "fresh")
    assert rebuilt["indexUpdate"] == "rebuild" and rebuilt["chunks"] == second["chunks"]
    fresh = open_index(f"s3://{BUCKET}/ns/VectorIndex/fresh", 1, object_store, tmp_path / "cache")
    assert [[c for c, _ in row] for row in answers] == [[c for c, _ in row] for row in _hits(fresh)]
    np.testing.assert_allclose([s for row in answers for _, s in row],
                               [s for row in _hits(fresh) for _, s in row], atol=2e-4)

    # The reader that held version 1 answers as before, and version 1's files still match its manifest.
    assert _hits(held) == held_before
    again = tmp_path / "v1-again"
    download_version(object_store, held.prefix, 1, read_manifest(object_store, held.prefix, 1), again)
    assert _hits(type(held)(held.prefix, 1, held.manifest, again)) == held_before


@pytest.mark.parametrize("vector_ids", [[-1, -1, -1], [0, 1, 3], [0, 1, 1]])
def test_a_version_whose_chunks_name_ids_the_index_does_not_hold_once_each_is_refused(tmp_path, vector_ids):
    """Not a search that silently finds nothing: a writer that left new chunks' ids at -1 once made every
    retrieval metric of an EvalRun 0."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kubeforge.storage.layout import INDEX_CHUNKS_FILE, INDEX_VECTORS_FILE, ResourcePrefix
    from kubeforge_workloads.index.query import IndexVersion

    vectors = engine.prepare(np.eye(3, dtype=np.float32), "cosine")
    pq.write_table(pa.table({"chunk_id": ["a#c0", "b#c0", "c#c0"], "document_id": ["a", "b", "c"],
                             "text": ["a", "b", "c"], "metadata": ["{}"] * 3,
                             "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 3),
                             "vector_id": pa.array(vector_ids, pa.int64())}), tmp_path / INDEX_CHUNKS_FILE)
    engine.save(engine.build(vectors, "cosine", "flat"), str(tmp_path / INDEX_VECTORS_FILE))
    manifest = {"metric": "cosine", "index": {"type": "flat"}, "dims": 3}
    with pytest.raises(ValueError, match="vector id outside the index's 3 vectors, or ids repeat"):
        IndexVersion(ResourcePrefix(BUCKET, "ns/VectorIndex/vi"), 1, manifest, tmp_path)
    pq.write_table(pq.read_table(tmp_path / INDEX_CHUNKS_FILE).drop_columns(["vector_id"]),
                   tmp_path / INDEX_CHUNKS_FILE)  # format 1: row r is id r
    hits = IndexVersion(ResourcePrefix(BUCKET, "ns/VectorIndex/vi"), 1, manifest, tmp_path).search(vectors[1], k=1)
    assert [hit.chunk_id for hit in hits] == ["b#c0"]
