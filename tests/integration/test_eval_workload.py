"""The EvalRun workload against real parts: a moto S3 server, two VectorIndex versions of one corpus (chunk sizes 16
and 64) written by the index workload's own sync, a scripted OpenAI-compatible
endpoint and judge served over HTTP by uvicorn (deterministic replies, some malformed, one rejected question),
reached through KUBEFORGE_SERVICE_ALIASES as the sandbox does, and MLflow on sqlite.

Attempt 1 dies when the endpoint goes down mid-run; attempt 2 answers and judges only the rows attempt 1 did not
score (counted on the server). A second EvalRun with the same inputs, run as the RayJob entrypoint, gives the same
metrics (latency aside).

Run under the sandbox lock:
    flock /tmp/kubeforge-sandbox.lock .venv/bin/python -m pytest tests/integration/test_eval_workload.py -x -q
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from fastapi import Request  # module level: FastAPI resolves the handler's string annotations from its globals

from tests.conftest import REPO_ROOT
from tests.moto_s3 import free_port, moto_s3_server

BUCKET = "kubeforge"
NAMESPACE = "ns"
EXPERIMENT = f"{NAMESPACE}/EvalRun"
DATASET_KEY = "eval/questions.jsonl"
CORPUS_PREFIX = "eval/corpus/"
API_KEY = "key-1"
ENDPOINT_URL = "http://chat-serve-svc.ns.svc:8000/ns/chat/v1"
JUDGE_URL = "http://judge-serve-svc.ns.svc:8000/ns/judge/v1"
MAX_TOKENS = 64

CORPUS = {
    "resume.txt": "When a node fails, Kubeforge starts a new attempt that resumes training from the last committed "
                  "checkpoint. A checkpoint counts only after its manifest is written last. Older checkpoints are "
                  "kept until a newer one is committed, so a crash while writing never loses the previous one.",
    "nodecheck.txt": "Before training, every worker runs a node check: the GPU must be visible, a small matrix "
                     "multiplication must give the known answer, and a collective must reach every peer.",
    "serving.txt": "A ServingEndpoint serves a base model with LoRA adapters behind an OpenAI-compatible chat "
                   "completions API, autoscaled by Ray Serve.",
    "index.txt": "Vector index versions are immutable; a new version becomes visible only when its manifest is "
                 "written.",
    "registry.txt": "Fine-tuned models are registered in the MLflow model registry once per resource generation.",
    "retention.txt": "Old index versions beyond keepVersions are garbage-collected after a new version lands.",
}
QUESTIONS = [
    {"id": "q1", "question": "How does training resume after a node failure?", "expected_answer":
        "A new attempt resumes from the last committed checkpoint.", "relevant_doc_ids": ["resume.txt"]},
    {"id": "q2", "question": "What does the node check verify before training?",
     "relevant_doc_ids": {"nodecheck.txt": 2, "resume.txt": 0}},
    {"id": "q3", "question": "How are models served with adapters?", "relevant_doc_ids": ["serving.txt"]},
    {"id": "q4", "question": "When does a new index version become visible? [flaky]",
     "relevant_doc_ids": {"index.txt": 2, "retention.txt": 1}},
    {"id": "q5", "question": "Where are fine-tuned models registered? [malformed]",
     "relevant_doc_ids": ["registry.txt"]},
    {"id": "q6", "question": "What happens to old index versions?", "relevant_doc_ids": ["retention.txt"]},
    {"id": "q7", "question": "Tell me a joke. [reject]"},
    {"id": "q8", "question": "Which API does a ServingEndpoint expose?", "relevant_doc_ids": ["serving.txt"]},
    {"id": "q9", "question": "Is a checkpoint valid before its manifest is written?",
     "relevant_doc_ids": ["resume.txt"]},
    {"id": "q10", "question": "What autoscales the serving replicas?", "relevant_doc_ids": ["serving.txt"]},
]
CRITERIA = ("correctness", "comprehensiveness", "readability")


class ScriptedOpenAI:
    """An OpenAI-compatible server answering for model "chat" (the endpoint) and "judge" (the judge), counting
    requests per model and question. Judge verdicts follow a hash of question and criterion."""

    def __init__(self):
        import uvicorn
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse

        self.requests: Counter = Counter()
        self.problems: list[str] = []
        self.down = threading.Event()
        self.healthy_generations = None
        self._lock = threading.Lock()
        app = FastAPI()

        @app.post("/{path:path}/chat/completions")
        async def complete(path: str, request: Request):
            body = await request.json()
            reply = self.reply(path, body, request.headers.get("authorization"))
            if isinstance(reply, tuple):
                return JSONResponse({"error": reply[1]}, status_code=reply[0])
            return {"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}],
                    "usage": {"prompt_tokens": 11, "completion_tokens": len(reply.split())}}

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "scripted server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)

    def reply(self, path: str, body: dict, authorization):
        model, messages = body.get("model"), body.get("messages") or []
        if model == "chat":
            question = messages[-1]["content"]
            with self._lock:
                if self.healthy_generations is not None and self.requests["chat"] >= self.healthy_generations:
                    return 503, "endpoint down"
                self.requests["chat"] += 1
                self.requests[("chat", question)] += 1
            if path != "ns/chat/v1" or authorization != f"Bearer {API_KEY}":
                self.problems.append(f"endpoint request to {path} with {authorization!r}")
            if body.get("temperature") != 0 or body.get("max_tokens") != MAX_TOKENS:
                self.problems.append(f"endpoint request {body}")
            if "[reject]" in question:
                return 400, "this model does not tell jokes"
            return f"Answer: {question.split('?')[0]}."
        if model == "judge":
            content = messages[-1]["content"]
            question = content.rsplit("\nQuestion: ", 1)[-1].split("\n", 1)[0] if "\nQuestion: " in content \
                else content.rsplit("Question: ", 1)[-1].split("\n", 1)[0]
            criterion = re.search(r"Grade the answer on (\w+)\.", content).group(1)
            with self._lock:
                self.requests["judge"] += 1
                self.requests[("judge", question)] += 1
                self.requests[("judge", question, criterion)] += 1
                seen = self.requests[("judge", question, criterion)]
            if body.get("response_format") != {"type": "json_object"} or body.get("temperature") != 0.1:
                self.problems.append(f"judge request {body.get('response_format')} {body.get('temperature')}")
            if path != "ns/judge/v1":
                self.problems.append(f"judge request to {path}")
            if "[malformed]" in question:
                return "I would say it deserves a 2"
            if "[flaky]" in question and seen == 1:
                return json.dumps({"score": 5, "justification": "off the scale"})
            score = int(hashlib.sha256(f"{question}|{criterion}".encode()).hexdigest(), 16) % 4
            return json.dumps({"score": score, "justification": f"{criterion} earns {score}"})
        return 404, f"no model {model}"

    def expected_scores(self, question: str) -> dict[str, int]:
        return {c: int(hashlib.sha256(f"{question}|{c}".encode()).hexdigest(), 16) % 4 for c in CRITERIA}


def build_index(store, name: str, chunk_size: int, work: Path) -> int:
    """Version 1 of VectorIndex `name` over CORPUS (uploaded under CORPUS_PREFIX), made by the index workload's own
    sync (embedding in the driver, as a small re-sync does, so that the fixture starts no Ray); returns its chunks."""
    from kubeforge.api.vectorindex import VectorIndexSpec
    from kubeforge.api.workload import WorkloadContext
    from kubeforge_workloads.common.heartbeat import Heartbeat
    from kubeforge_workloads.common.storage import WorkloadStorage
    from kubeforge_workloads.index import build

    spec = {"source": {"uri": f"s3://{BUCKET}/{CORPUS_PREFIX}"}, "embedding": {"batchSize": 32},
            "chunking": {"strategy": "tokens", "size": chunk_size, "overlap": 4}, "index": {"type": "flat"}}
    context = WorkloadContext(kind="VectorIndex", namespace=NAMESPACE, name=name, uid=f"uid-{name}", generation=1,
                              attempt=1, spec=spec,
                              storage={"bucket": BUCKET, "prefix": f"{NAMESPACE}/VectorIndex/{name}"},
                              mlflow={"experiment": f"{NAMESPACE}/VectorIndex", "run_name": name})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(build, "embeds_in_driver", lambda previous, to_read: True)
        result = build.sync(context, VectorIndexSpec.model_validate(spec), WorkloadStorage(context, store),
                            Heartbeat(lambda progress: None, 1), work)
    assert (result["version"], result["documents"]) == (1, len(CORPUS)), result
    return result["chunks"]


@pytest.fixture(scope="module")
def eval_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    with moto_s3_server(BUCKET), ScriptedOpenAI() as openai, pytest.MonkeyPatch.context() as environ:
        environ.setenv("KUBEFORGE_SERVICE_ALIASES", json.dumps({
            "chat-serve-svc.ns.svc:8000": f"127.0.0.1:{openai.port}",
            "judge-serve-svc.ns.svc:8000": f"127.0.0.1:{openai.port}"}))
        environ.setenv("KUBEFORGE_ENDPOINT_API_KEY", f"\n{API_KEY}\nkey-2\n")
        import boto3
        import mlflow

        from kubeforge.storage.objectstore import S3ObjectStore

        s3 = boto3.client("s3")
        s3.put_object(Bucket=BUCKET, Key=DATASET_KEY,
                      Body="".join(json.dumps(row) + "\n" for row in QUESTIONS).encode())
        store = S3ObjectStore(s3)
        for document_id, text in CORPUS.items():
            s3.put_object(Bucket=BUCKET, Key=f"{CORPUS_PREFIX}{document_id}", Body=text.encode())
        chunks = {name: build_index(store, name, size, tmp / name) for name, size in (("small", 16), ("large", 64))}
        assert chunks["small"] > chunks["large"] >= len(CORPUS)
        tracking_uri = f"sqlite:///{tmp}/mlflow.db"
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.create_experiment(EXPERIMENT, artifact_location=(tmp / "mlartifacts").as_uri())
        yield {"s3": s3, "store": store, "openai": openai, "tracking_uri": tracking_uri, "tmp": tmp}


def _context(name: str, attempt: int, tracking_uri: str) -> dict:
    spec = {"dataset": {"uri": f"s3://{BUCKET}/{DATASET_KEY}"},
            "target": {"endpointRef": "chat", "vectorIndexRefs": ["small", "large"]},
            "retrieval": {"k": [1, 3, 5]}, "judge": {"endpointRef": "judge"}, "concurrency": 2,
            "maxTokens": MAX_TOKENS}
    inputs = {"endpoint": {"name": "chat", "url": ENDPOINT_URL, "model": "chat",
                           "apiKeyEnv": "KUBEFORGE_ENDPOINT_API_KEY"},
              "judge": {"name": "judge", "url": JUDGE_URL, "model": "judge"},
              "indexes": {name: {"uri": f"s3://{BUCKET}/{NAMESPACE}/VectorIndex/{name}", "version": 1}
                          for name in ("small", "large")}}
    return {"kind": "EvalRun", "namespace": NAMESPACE, "name": name, "uid": f"uid-{name}", "generation": 1,
            "attempt": attempt, "spec": spec, "inputs": inputs,
            "storage": {"bucket": BUCKET, "prefix": f"{NAMESPACE}/EvalRun/{name}"},
            "mlflow": {"experiment": EXPERIMENT, "run_name": name, "tracking_uri": tracking_uri}}


def _run_in_process(context: dict) -> int:
    from kubeforge.api.workload import WorkloadContext
    from kubeforge_workloads.common.errors import run_workload
    from kubeforge_workloads.common.storage import WorkloadStorage
    from kubeforge_workloads.evaluate.run import run

    workload_context = WorkloadContext.model_validate(context)
    storage = WorkloadStorage(workload_context)
    try:
        run_workload(lambda: run(workload_context, storage), storage.write_failure)
    except SystemExit as exit_:
        return int(exit_.code)
    return 0


def _get_json(s3, key: str):
    return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def _jsonl(s3, key: str) -> list[dict]:
    return [json.loads(line) for line in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode().splitlines()]


def _saved_scored(s3, prefix: str) -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/outputs/rows/")
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    return {row["question"] for key in keys for row in _jsonl(s3, key) if not row["error"]}


def test_eval_run_scores_counts_error_rows_resumes_and_logs_to_mlflow(eval_env):
    s3, openai = eval_env["s3"], eval_env["openai"]
    prefix = f"{NAMESPACE}/EvalRun/eval"

    # attempt 1: the endpoint goes down after 4 answers; what was scored is saved, the attempt fails to be retried
    openai.healthy_generations = 4
    code = _run_in_process(_context("eval", 1, eval_env["tracking_uri"]))
    assert code == 75, openai.requests
    failure = _get_json(s3, f"{prefix}/attempts/1/failure.json")
    assert failure["reason"] == "Infrastructure" and "chat" in failure["message"], failure
    scored_before = _saved_scored(s3, prefix)
    assert 1 <= len(scored_before) <= 4, scored_before

    openai.healthy_generations = None
    openai.requests.clear()
    assert _run_in_process(_context("eval", 2, eval_env["tracking_uri"])) == 0
    assert not openai.problems, openai.problems[:3]
    asked = {key[1] for key in openai.requests if isinstance(key, tuple) and key[0] == "chat"}
    judged = {key[1] for key in openai.requests if isinstance(key, tuple) and key[0] == "judge" and len(key) == 2}
    all_questions = {row["question"] for row in QUESTIONS}
    assert asked == all_questions - scored_before and not judged & scored_before
    assert openai.requests["chat"] == len(QUESTIONS) - len(scored_before)

    result = _get_json(s3, f"{prefix}/outputs/result.json")
    assert set(result) == {"metrics", "rows", "resultsUri", "indexes", "mlflowRunId"}, result
    assert result["rows"] == {"total": 10, "scored": 8, "failed": 2}
    retrieval = {f"retrieval/{index}/{metric}@{k}" for index in ("small", "large")
                 for metric in ("precision", "recall", "ndcg", "mrr", "hit_rate") for k in (1, 3, 5)}
    assert set(result["metrics"]) == retrieval | {"judge/score", "judge/correctness", "judge/comprehensiveness",
                                                  "judge/readability", "rows/failedFraction",
                                                  "latency/p50Seconds", "latency/p95Seconds"}
    assert result["metrics"]["rows/failedFraction"] == 0.2
    assert set(result["indexes"]) == {"small", "large"} and result["indexes"]["large"]["version"] == 1
    assert result["indexes"]["large"]["metrics"]["ndcg@5"] == result["metrics"]["retrieval/large/ndcg@5"]
    assert result["metrics"]["retrieval/large/hit_rate@5"] >= 0.8, result["indexes"]

    rows = {row["id"]: row for row in _jsonl(s3, f"{prefix}/outputs/results.jsonl")}
    assert result["resultsUri"] == f"s3://{BUCKET}/{prefix}/outputs/results.jsonl" and len(rows) == 10
    assert rows["q5"]["error"].startswith("judge:") and rows["q5"]["raw_reply"] == "I would say it deserves a 2"
    assert rows["q7"]["error"].startswith("generation:") and "HTTP 400" in rows["q7"]["error"]
    # each criterion's first reply was off the scale, and was asked again
    assert rows["q4"]["error"] is None and rows["q4"]["judge_requests"] == 2 * len(CRITERIA)
    assert set(rows["q1"]["retrieved"]) == {"small", "large"}
    assert rows["q1"]["retrieved"]["large"][0] == "resume.txt"
    scored = [row for row in rows.values() if not row["error"]]
    for row in scored:
        assert row["scores"] == openai.expected_scores(row["question"])
    means = {c: sum(row["scores"][c] for row in scored) / len(scored) for c in CRITERIA}
    assert result["metrics"]["judge/score"] == pytest.approx(
        0.6 * means["correctness"] + 0.2 * means["comprehensiveness"] + 0.2 * means["readability"], abs=1e-12)
    progress = _get_json(s3, f"{prefix}/progress.json")
    assert (progress["phase"], progress["step"], progress["totalSteps"]) == ("Done", 10, 10)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(eval_env["tracking_uri"])
    run = client.get_run(result["mlflowRunId"])
    assert run.data.tags["kubeforge.uid"] == "uid-eval" and run.info.status == "FINISHED"
    assert run.data.metrics["retrieval/small/ndcg_at_5"] == result["metrics"]["retrieval/small/ndcg@5"]
    assert run.data.metrics["judge/score"] == result["metrics"]["judge/score"]
    table = client.load_table(run.info.experiment_id, "eval/rows.json", run_ids=[run.info.run_id])
    assert len(table) == 10 and set(table["id"]) == set(rows)
    assert {"correctness_score", "correctness_justification", "raw_reply"} <= set(table.columns)
    prompts = {item.path for item in client.list_artifacts(run.info.run_id, "eval/judge_prompts")}
    assert prompts == {f"eval/judge_prompts/{c}.txt" for c in CRITERIA}

    # the same EvalRun again, as the RayJob runs its entrypoint, with MLflow unusable: the same numbers (latency is
    # the clock's), and the tracking failure reported rather than failing the run
    unusable = f"sqlite:///{eval_env['tmp']}/mlflow.db/under-a-file.db"  # its folder is a file
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "operator"), str(REPO_ROOT / "workloads")]),
           "KUBEFORGE_CONTEXT": json.dumps(_context("again", 1, unusable))}
    finished = subprocess.run([sys.executable, "-m", "kubeforge_workloads.evaluate"], env=env, cwd=eval_env["tmp"],
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-3000:]
    again = _get_json(s3, f"{NAMESPACE}/EvalRun/again/outputs/result.json")

    def steady(metrics: dict) -> dict:
        return {name: value for name, value in metrics.items() if not name.startswith("latency/")}

    assert steady(again["metrics"]) == steady(result["metrics"]) and again["rows"] == result["rows"]
    assert "mlflowRunId" not in again and "could not log the evaluation to MLflow" in again["trackingError"]
