"""The VectorIndex build entrypoint as a RayJob runs it (a subprocess with KUBEFORGE_CONTEXT, local Ray, a moto S3
server, MLflow on sqlite): a first sync over txt/md/html/pdf/jsonl documents (bad ones skipped and counted), then a
second sync after one document changed and one was deleted, which embeds only the changed document and reuses every
other document's chunks and vectors. The query library answers from the current version and from the one before.
Every sync is an MLflow run.

Run under the sandbox lock:
    flock /tmp/kubeforge-sandbox.lock .venv/bin/python -m pytest tests/integration/test_index_workload.py -x -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.integration.conftest_workloads import Finished, WorkloadEnv
from tests.moto_s3 import moto_s3_server
from tests.unit.workloads.minimal_pdf import minimal_pdf

BUCKET = "kubeforge"
NAME = "docs"
PREFIX = f"ns/VectorIndex/{NAME}"
SOURCE = "corpus/"
EXPERIMENT = "ns/VectorIndex"
CPUS_PER_WORKER = 2
"""The local Ray gets exactly the worker's CPUs, as a KubeRay cluster whose head holds none (num-cpus 0) offers: a
build whose actors hold every CPU leaves its read tasks waiting forever."""

DOCUMENTS = {
    "guide/resume.txt": b"When a node fails, Kubeforge starts a new attempt that resumes training from the last "
                        b"committed checkpoint. A checkpoint counts only after its manifest is written last.",
    "guide/gpus.md": b"# Node checks\n\nBefore training, every worker runs a **node check**: the GPU must be "
                     b"visible, a small matrix multiplication must give the known answer, and a collective must "
                     b"reach every peer.\n\n## Failures\n\nA failed node check is retried on other nodes.",
    "serving.html": b"<html><head><title>Serving</title><style>p{color:red}</style></head><body><h1>Serving</h1>"
                    b"<p>A ServingEndpoint serves a base model with LoRA adapters behind an OpenAI-compatible "
                    b"chat completions API, autoscaled by Ray Serve.</p><script>var tracking = 1;</script>"
                    b"</body></html>",
    "manual.pdf": minimal_pdf(["Vector index versions are immutable.",
                               "A new version becomes visible only when its manifest is written."],
                              title="Index manual"),
    "faq.jsonl": b'{"id": "lora", "question": "What rank should LoRA use?", "team": "ml"}\n'
                 b'{"id": "mlflow", "question": "Where are fine-tuned models registered? In the MLflow model '
                 b'registry.", "team": "platform"}\n'
                 b'{"id": "broken", "answer": "a row without the text field"}\n',
    "empty.txt": b"",
    "corrupt.pdf": b"%PDF-1.4\nthis is not really a pdf",
}


@pytest.fixture(scope="module")
def index_env(tmp_path_factory):
    from tests.conftest import REPO_ROOT

    tmp = tmp_path_factory.mktemp("index")
    with moto_s3_server(BUCKET) as s3_env:
        import boto3

        import mlflow

        s3 = boto3.client("s3")
        for name, body in DOCUMENTS.items():
            s3.put_object(Bucket=BUCKET, Key=SOURCE + name, Body=body)
        tracking_uri = f"sqlite:///{tmp}/mlflow.db"
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.create_experiment(EXPERIMENT, artifact_location=(tmp / "mlartifacts").as_uri())
        env = {**os.environ, **s3_env, "MLFLOW_TRACKING_URI": tracking_uri, "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "RAY_DEDUP_LOGS": "0",
               "TOKENIZERS_PARALLELISM": "false", "KUBEFORGE_LOCAL_RAY_CPUS": str(CPUS_PER_WORKER),
               "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "operator"), str(REPO_ROOT / "workloads"),
                                              os.environ.get("PYTHONPATH", "")])}
        env.pop("RAY_ADDRESS", None)
        env.pop("KUBEFORGE_CONTEXT", None)
        yield WorkloadEnv(env=env, tmp=tmp, tracking_uri=tracking_uri, s3=s3)


def _context(attempt: int, generation: int) -> dict:
    spec = {"source": {"uri": f"s3://{BUCKET}/{SOURCE}", "include": ["**"],
                       "jsonl": {"idField": "id", "textField": "question", "metadataFields": ["team"]}},
            "chunking": {"strategy": "tokens", "size": 64, "overlap": 8},
            "index": {"type": "hnsw"}, "resources": {"workers": 1, "cpusPerWorker": CPUS_PER_WORKER}}
    return {"kind": "VectorIndex", "namespace": "ns", "name": NAME, "uid": "uid-docs", "generation": generation,
            "attempt": attempt, "spec": spec, "storage": {"bucket": BUCKET, "prefix": PREFIX},
            "mlflow": {"experiment": EXPERIMENT, "run_name": NAME}}


def _sync(env: WorkloadEnv, attempt: int, generation: int) -> dict:
    finished: Finished = env.run("kubeforge_workloads.index", _context(attempt, generation), timeout=150)
    assert finished.returncode == 0, finished.stderr[-3000:]
    result = env.get_json(f"{PREFIX}/outputs/result.json")
    assert result is not None and result["attempt"] == attempt, result
    return result


def _chunk_vectors(env: WorkloadEnv, version: int) -> dict[str, tuple[str, bytes]]:
    """chunk id -> (text, vector bytes) of a committed version, read straight from its Parquet file."""
    import io

    import pyarrow.parquet as pq

    body = env.s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/outputs/index/v-{version}/chunks.parquet")["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    vectors = np.asarray(table.column("vector").combine_chunks().flatten().to_numpy(), dtype=np.float32)
    vectors = vectors.reshape(table.num_rows, -1)
    return {cid: (text, vectors[i].tobytes()) for i, (cid, text) in
            enumerate(zip(table.column("chunk_id").to_pylist(), table.column("text").to_pylist()))}


def mlflow_manifest(run) -> dict:
    import mlflow

    from kubeforge_workloads.index.tracking import MANIFEST_ARTIFACT

    return mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{MANIFEST_ARTIFACT}")


def test_sync_then_incremental_resync_reuses_unchanged_documents(index_env):
    from kubeforge_workloads.index.query import open_index

    first = _sync(index_env, attempt=1, generation=1)
    assert (first["version"], first["documents"], first["metric"], first["dims"]) == (1, 6, "cosine", 384)
    assert first["indexUri"] == f"s3://{BUCKET}/{PREFIX}/outputs/index/v-1/"
    assert first["recall"] >= 0.95 and first["recallK"] == 10 and not first["degraded"]
    assert {cause: entry["count"] for cause, entry in first["skipped"].items()} == \
        {"empty": 1, "unparseable": 1, "missingTextField": 1}
    assert first["sync"]["embeddedDocuments"] == 6 and first["sync"]["reusedDocuments"] == 0
    assert first["chunks"] == first["sync"]["embeddedChunks"] >= 6
    progress = index_env.get_json(f"{PREFIX}/progress.json")
    assert (progress["phase"], progress["step"], progress["totalSteps"]) == ("Done", 6, 6)

    index = open_index(f"s3://{BUCKET}/{PREFIX}")
    hits = index.search("How do I serve a model behind an OpenAI-compatible API?", k=3)
    assert hits[0].document_id == "serving.html", hits
    assert "tracking" not in hits[0].text and hits[0].metadata["title"] == "Serving"
    assert index.search("Where are fine-tuned models registered?", k=1)[0].document_id == "faq.jsonl#mlflow"
    only_platform = index.search("LoRA rank", k=5, filter={"team": "platform"})
    assert [hit.document_id for hit in only_platform] == ["faq.jsonl#mlflow"]
    from_pdf = index.search("Is a version visible before its manifest?", k=1)[0]
    assert (from_pdf.document_id, from_pdf.metadata["title"], from_pdf.metadata["pages"]) == \
        ("manual.pdf", "Index manual", 2)

    before = _chunk_vectors(index_env, 1)
    index_env.s3.put_object(Bucket=BUCKET, Key=SOURCE + "guide/gpus.md",
                            Body=b"# Retention\n\nOld index versions beyond keepVersions are garbage-collected "
                                 b"after a new version lands; the current version is never deleted.")
    index_env.s3.delete_object(Bucket=BUCKET, Key=SOURCE + "guide/resume.txt")
    second = _sync(index_env, attempt=2, generation=2)

    after = _chunk_vectors(index_env, 2)
    changed = {cid for cid in after if cid.startswith("guide/gpus.md#")}
    assert second["version"] == 2 and second["documents"] == 5
    assert second["sync"]["embeddedDocuments"] == 1 and second["sync"]["reusedDocuments"] == 4
    assert second["sync"]["deletedDocuments"] == 1
    assert second["sync"]["embeddedChunks"] == len(changed)
    assert second["sync"]["reusedChunks"] == len(after) - len(changed)
    assert not any(cid.startswith("guide/resume.txt#") for cid in after)
    for cid in set(after) - changed:  # reused as stored, not embedded again
        assert after[cid] == before[cid], cid

    current = open_index(f"s3://{BUCKET}/{PREFIX}")
    assert current.version == 2
    assert current.search("What happens to old index versions?", k=1)[0].document_id == "guide/gpus.md"
    held = open_index(f"s3://{BUCKET}/{PREFIX}", version=1)
    assert held.search("resume training from the last checkpoint", k=1)[0].document_id == "guide/resume.txt"

    cli = subprocess.run([sys.executable, "-m", "kubeforge_workloads.index.query", f"s3://{BUCKET}/{PREFIX}",
                          "OpenAI-compatible chat API", "-k", "2", "--filter", "format=html"], env=index_env.env,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr[-2000:]
    (line,) = cli.stdout.splitlines()
    assert (json.loads(line)["documentId"], json.loads(line)["version"]) == ("serving.html", 2)

    third = _sync(index_env, attempt=3, generation=3)  # nothing changed: no new version, nothing embedded
    assert (third["version"], third["unchanged"], third["sync"]["embeddedChunks"]) == (2, True, 0)

    # one MLflow run per sync, holding what the sync did and the manifest of the version it left current
    from mlflow.tracking import MlflowClient

    client = MlflowClient(index_env.tracking_uri)
    logged = {run.info.run_id: run for run in client.search_runs(
        [client.get_experiment_by_name(EXPERIMENT).experiment_id], filter_string="tags.`kubeforge.uid` = 'uid-docs'")}
    assert set(logged) == {first["mlflowRunId"], second["mlflowRunId"], third["mlflowRunId"]}
    for synced in (first, second, third):
        run = logged[synced["mlflowRunId"]]
        assert run.info.status == "FINISHED" and run.data.params["version"] == str(synced["version"])
        assert run.data.params["embedding_model"] == synced["model"]
        assert run.data.metrics["chunks"] == synced["chunks"] and run.data.metrics["documents"] == synced["documents"]
        assert run.data.metrics["embedded_chunks"] == synced["sync"]["embeddedChunks"]
        assert run.data.metrics["skipped_documents"] == synced["skippedDocuments"]
        assert run.data.metrics["build_seconds"] == synced["buildSeconds"] > 0
        manifest = json.loads(index_env.s3.get_object(
            Bucket=BUCKET, Key=f"{PREFIX}/outputs/index/v-{synced['version']}/MANIFEST.json")["Body"].read())
        assert mlflow_manifest(run) == manifest


def test_a_build_killed_mid_embedding_resumes_without_embedding_saved_chunks_again(index_env, tmp_path):
    import io

    import pyarrow.parquet as pq

    name, prefix = "killed", "ns/VectorIndex/killed"
    context = _context(attempt=1, generation=1)
    context.update(name=name, uid="uid-killed", storage={"bucket": BUCKET, "prefix": prefix})
    context["spec"]["embedding"] = {"batchSize": 2}
    partial = f"{prefix}/outputs/index/v-1/partial/"
    stall = tmp_path / "stall"
    stall.write_text("")  # the driver stops after its first saved batch; then it is killed
    killed = index_env.run("kubeforge_workloads.index", context, timeout=150,
                           extra_env={"KUBEFORGE_CHAOS_STALL_FILE": str(stall),
                                      "KUBEFORGE_INDEX_PARTIAL_SAVE_SECONDS": "0"},
                           kill_when=lambda: bool(index_env.keys(partial)))
    assert killed.killed, killed.stderr[-3000:]
    saved = {}
    for key in index_env.keys(partial):
        table = pq.read_table(io.BytesIO(index_env.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
        vectors = np.asarray(table.column("vector").combine_chunks().flatten().to_numpy(), dtype=np.float32)
        for i, (document_id, ordinal) in enumerate(zip(table.column("document_id").to_pylist(),
                                                       table.column("ordinal").to_pylist())):
            saved[f"{document_id}#c{ordinal}"] = vectors.reshape(table.num_rows, -1)[i].tobytes()
    assert saved

    stall.unlink()
    context["attempt"] = 2
    finished = index_env.run("kubeforge_workloads.index", context, timeout=150)
    assert finished.returncode == 0, finished.stderr[-3000:]
    result = index_env.get_json(f"{prefix}/outputs/result.json")
    assert result["version"] == 1 and result["sync"]["resumedChunks"] == len(saved)
    assert result["sync"]["embeddedChunks"] == result["chunks"] - len(saved) > 0
    assert index_env.keys(partial) == []  # committing the version removed the saved parts
    body = index_env.s3.get_object(Bucket=BUCKET, Key=f"{prefix}/outputs/index/v-1/chunks.parquet")["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    vectors = np.asarray(table.column("vector").combine_chunks().flatten().to_numpy(), dtype=np.float32)
    stored = dict(zip(table.column("chunk_id").to_pylist(), vectors.reshape(table.num_rows, -1)))
    assert all(stored[cid].tobytes() == vector for cid, vector in saved.items())
