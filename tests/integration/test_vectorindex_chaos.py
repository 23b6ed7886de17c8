"""VectorIndex under faults, in the sandbox (operator, local KubeRay, Ray, S3, MLflow): the shipped example over the
shipped corpus becomes Ready and answers questions; a build killed mid-embedding resumes from the chunks it had
saved, embeds only the rest, and ends with the index an uninterrupted build makes; corrupt documents are skipped
with their cause and the index still becomes Ready.

Run under the sandbox lock:
    flock /tmp/kubeforge-sandbox.lock .venv/bin/python -m pytest tests/integration/test_vectorindex_chaos.py -x -q
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from kubeforge.dev.sandbox import BUCKET
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

EXAMPLE_FILE = REPO_ROOT / "examples" / "rag-index.yaml"
EXAMPLE = yaml.safe_load(EXAMPLE_FILE.read_text())
NAMESPACE = "default"


def prefix(name: str) -> str:
    return f"{NAMESPACE}/VectorIndex/{name}"


def vectorindex(name: str, env: dict | None = None, **spec) -> dict:
    obj = copy.deepcopy(EXAMPLE)
    obj["metadata"] = {"name": name}
    obj["spec"]["failurePolicy"] = {"backoff": {"initialSeconds": 1, "maxSeconds": 2}}
    if env:
        obj["spec"]["ray"] = {"runtimeEnv": {"env_vars": env}}
    for key, value in spec.items():
        obj["spec"][key] = {**obj["spec"].get(key, {}), **value} if isinstance(value, dict) else value
    return obj


def status(sandbox, name: str) -> dict:
    return sandbox.get("vectorindex", name).get("status") or {}


def ready(st: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions") or [])


def wait_ready(sandbox, name: str, timeout: float = 600) -> dict:
    def done():
        st = status(sandbox, name)
        if st.get("phase") == "Failed" or any(c["type"] == "Stalled" and c["status"] == "True"
                                              for c in st.get("conditions") or []):
            raise AssertionError(f"{name} failed: {json.dumps(st, indent=1)}")
        return ready(st) and (st.get("run") or {}).get("outcome") == "Succeeded" and st

    return sandbox.wait_for(done, f"{name} to be Ready", timeout=timeout, interval=1)


def chaos(sandbox, *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "kubeforge", "dev", "chaos", *args, "-n", NAMESPACE],
                            env=sandbox.env, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr


def keys(s3, key_prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=key_prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def chunk_rows(s3, keys_or_key) -> dict[str, tuple[str, np.ndarray]]:
    """chunk id -> (text, vector) of Parquet chunk files (a version's chunks.parquet, or saved partial parts)."""
    import pyarrow.parquet as pq

    rows = {}
    for key in [keys_or_key] if isinstance(keys_or_key, str) else keys_or_key:
        table = pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
        vectors = np.asarray(table.column("vector").combine_chunks().flatten().to_numpy(), dtype=np.float32)
        vectors = vectors.reshape(table.num_rows, -1)
        for i, (document_id, ordinal, text) in enumerate(zip(table.column("document_id").to_pylist(),
                                                             table.column("ordinal").to_pylist(),
                                                             table.column("text").to_pylist())):
            rows[f"{document_id}#c{ordinal}"] = (text, vectors[i])
    return rows


@pytest.fixture(scope="module")
def example_index(sandbox):
    """examples/rag-index.yaml exactly as shipped, over the corpus the sandbox seeded from examples/corpus."""
    name = EXAMPLE["metadata"]["name"]
    sandbox.kubectl("apply", "-f", str(EXAMPLE_FILE))
    yield name, wait_ready(sandbox, name)


QUESTIONS = {
    "How are failed attempts retried, and how long is the wait between them?": "operations-handbook.pdf",
    "What does a finalizer do when an object is deleted?": "kubernetes/finalizers.html",
    "Which Ray feature restarts the worker group after a training worker fails?": "ray/ray-train.txt",
    "How do I force a VectorIndex to sync now?": "kubeforge/incremental-sync.md",
    "What kills a Ray worker when the node runs out of memory?": "ray/memory-monitor.txt",
}


def test_the_example_over_the_shipped_corpus_is_ready_and_finds_the_relevant_document_first(sandbox, example_index):
    from kubeforge.storage.objectstore import S3ObjectStore
    from kubeforge_workloads.index.query import open_index

    name, st = example_index
    corpus = [key for key in keys(sandbox.s3(), "seed/corpus/")]
    assert st["currentVersion"] == 1 and st["documents"] == len(corpus) >= 36 and st["skipped"] == {}
    index = open_index(f"s3://{BUCKET}/{prefix(name)}", store=S3ObjectStore(sandbox.s3()))
    answers = {question: index.search(question, k=3)[0].document_id for question in QUESTIONS}
    assert answers == QUESTIONS


def test_a_build_killed_mid_embedding_resumes_from_saved_chunks_and_equals_an_uninterrupted_build(
        sandbox, example_index):
    s3 = sandbox.s3()
    name = "chaos-killed"
    # Small batches, each saved at once: the stall below stops the build after its first saved batch.
    sandbox.kubectl("apply", "-f", "-", input=yaml.safe_dump(vectorindex(
        name, env={"KUBEFORGE_INDEX_PARTIAL_SAVE_SECONDS": "0"}, embedding={"batchSize": 8})))
    first = sandbox.wait_for(lambda: (status(sandbox, name).get("attempts") or [{}])[0].get("rayJob"),
                             "the first attempt", timeout=120, interval=0.5)
    # the attempt's name is recorded before its RayJob exists
    sandbox.wait_for(lambda: sandbox.kubectl("get", "rayjob", first, "-n", NAMESPACE, check=False).returncode == 0,
                     f"RayJob {first}", timeout=120, interval=0.5)
    chaos(sandbox, "stall", first)  # acted on once submitted, long before the first batch is embedded
    partial = f"{prefix(name)}/outputs/index/v-1/partial/"
    sandbox.wait_for(lambda: keys(s3, partial), "the first saved batch", timeout=300, interval=0.5)
    saved = chunk_rows(s3, keys(s3, partial))
    chaos(sandbox, "kill", first, "--reason", "NodeLost")

    st = wait_ready(sandbox, name)
    attempts = st["attempts"]
    assert [a["outcome"] for a in attempts] == ["Failed", "Succeeded"], json.dumps(attempts)
    assert attempts[0]["reason"] == "Infrastructure", json.dumps(attempts)
    sync = st["output"]["sync"]
    assert st["currentVersion"] == 1 and 0 < len(saved) < st["chunks"]
    assert sync["resumedChunks"] == len(saved)  # the saved chunks were taken as they were ...
    assert sync["embeddedChunks"] == st["chunks"] - len(saved)  # ... and only the rest was embedded
    assert keys(s3, partial) == []

    resumed = chunk_rows(s3, f"{prefix(name)}/outputs/index/v-1/chunks.parquet")
    for chunk_id, (_, vector) in saved.items():
        assert np.array_equal(resumed[chunk_id][1], vector), chunk_id
    example_name, _ = example_index
    uninterrupted = chunk_rows(s3, f"{prefix(example_name)}/outputs/index/v-1/chunks.parquet")
    assert sorted(resumed) == sorted(uninterrupted)
    for chunk_id, (text, vector) in uninterrupted.items():
        assert resumed[chunk_id][0] == text
        np.testing.assert_allclose(resumed[chunk_id][1], vector, atol=2e-5, err_msg=chunk_id)


def test_corrupt_documents_are_skipped_with_their_cause_and_the_index_becomes_ready(sandbox):
    s3 = sandbox.s3()
    source = "tests/vectorindex-chaos/corrupt/"
    pdf = (REPO_ROOT / "examples" / "corpus" / "operations-handbook.pdf").read_bytes()
    documents = {
        "good/overview.md": (REPO_ROOT / "examples" / "corpus" / "kubeforge" / "overview.md").read_bytes(),
        "good/pods.html": (REPO_ROOT / "examples" / "corpus" / "kubernetes" / "pods.html").read_bytes(),
        "bad/truncated.pdf": pdf[: len(pdf) // 2],
        "bad/latin1.txt": "Caf\u00e9 notes saved as Latin-1, not UTF-8.".encode("latin-1"),
        "bad/binary.md": b"# header\x00\x01\x02 then binary",
        "bad/empty.txt": b"",
    }
    for relative, body in documents.items():
        s3.put_object(Bucket=BUCKET, Key=source + relative, Body=body)
    name = "chaos-corrupt"
    corrupt = vectorindex(name, source={"uri": f"s3://{BUCKET}/{source}"})
    sandbox.kubectl("apply", "-f", "-", input=yaml.safe_dump(corrupt))

    st = wait_ready(sandbox, name)
    assert (st["phase"], st["currentVersion"], st["documents"]) == ("Ready", 1, 2), json.dumps(st, indent=1)
    skipped = st["skipped"]
    assert {cause: entry["count"] for cause, entry in skipped.items()} == \
        {"unparseable": 1, "invalidUtf8": 1, "binary": 1, "empty": 1}
    for cause, document in (("unparseable", "bad/truncated.pdf"), ("invalidUtf8", "bad/latin1.txt"),
                            ("binary", "bad/binary.md"), ("empty", "bad/empty.txt")):
        (example,) = skipped[cause]["examples"]
        assert example.startswith(f"{document}: "), (cause, example)
    assert st["output"]["skippedDocuments"] == 4
