"""`kubeforge batch` in the sandbox: the serving example's `reviews` template over 60 rows of the shipped reviews
table, as a RayJob with Ray Data. The run is killed (chaos) after it committed some shards; KubeRay reruns the same
RayJob (backoffLimit, from --retries) with no help from the CLI, the rerun skips every committed shard (not
rewritten: same LastModified and ETag, and counted as skipped), and every row ends with exactly one result; the
CLI printed rows done/total and the retry along the way."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kubeforge.api.batchinference import BatchProgress
from kubeforge.dev.sandbox import BUCKET
from kubeforge.launch.batchjob import LABEL_BATCH
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

ROWS = 60
INPUT_KEY, OUTPUT_PREFIX = "tests/batch/reviews-60.jsonl", "tests/batch/out/"


def shards(s3) -> dict[str, tuple[str, object]]:
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=OUTPUT_PREFIX).get("Contents", [])
    return {item["Key"]: (item["ETag"], item["LastModified"]) for item in listed}


def rayjobs(sandbox) -> list[dict]:
    return json.loads(sandbox.kubectl("get", "rayjobs", "-l", LABEL_BATCH, "-o", "json").stdout)["items"]


def test_batch_inference_resumes_after_a_kill_without_redoing_written_rows(sandbox):
    sandbox.kubectl("apply", "-f", str(REPO_ROOT / "examples" / "serving.yaml"))
    s3 = sandbox.s3()
    shipped = (REPO_ROOT / "examples" / "data" / "reviews.jsonl").read_text().splitlines()
    s3.put_object(Bucket=BUCKET, Key=INPUT_KEY, Body=("\n".join(shipped[:ROWS]) + "\n").encode())
    # The batch needs the endpoint's resolved weights (after its FineTune), not its replicas.
    sandbox.wait_for(lambda: ((sandbox.get("se", "assistant").get("status") or {}).get("inputs") or {}).get("model"),
                     "the endpoint's resolved model", timeout=300)
    cli = subprocess.Popen(
        [sys.executable, "-m", "kubeforge", "batch", "se/assistant", "--template", "reviews",
         "--input", f"s3://{BUCKET}/{INPUT_KEY}", "--output", f"s3://{BUCKET}/{OUTPUT_PREFIX}", "--block-rows", "1",
         "--retries", "2", "--timeout", "240"],
        env=sandbox.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        sandbox.wait_for(lambda: shards(s3), "the first committed shard", timeout=180, interval=0.2)
        (first,) = rayjobs(sandbox)
        result = subprocess.run([sys.executable, "-m", "kubeforge", "dev", "chaos", "kill", first["metadata"]["name"],
                                 "--reason", "NodeLost"], env=sandbox.env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        before_retry = shards(s3)  # the kill has been applied: everything committed by attempt 1 is here
        output, _ = cli.communicate(timeout=300)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 0, output
    assert 0 < len(before_retry) < ROWS, f"the kill was not mid-way ({len(before_retry)} of {ROWS} rows written)"
    (job,) = rayjobs(sandbox)  # rerun by KubeRay, not resubmitted by the CLI
    assert job["spec"]["backoffLimit"] == 2
    assert (job["status"]["jobDeploymentStatus"], job["status"]["failed"]) == ("Complete", 1), job["status"]
    assert "retry 1 of 2, by KubeRay" in output, output

    after = shards(s3)
    assert all(after[key] == meta for key, meta in before_retry.items()), "a shard written before the kill changed"
    rows = [json.loads(line) for key in sorted(after)
            for line in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode().splitlines()]
    assert sorted(r["row"] for r in rows) == list(range(ROWS))
    expected_ids = [json.loads(line)["id"] for line in shipped[:ROWS]]
    assert [r["id"] for r in sorted(rows, key=lambda r: r["row"])] == expected_ids
    assert all(isinstance(r["text"], str) and "json" in r for r in rows)

    endpoint = sandbox.get("se", "assistant")
    batch_id = rayjobs(sandbox)[0]["metadata"]["labels"][LABEL_BATCH]
    progress_key = f"default/ServingEndpoint/assistant/batches/{batch_id}/progress.json"
    progress = BatchProgress.model_validate_json(s3.get_object(Bucket=BUCKET, Key=progress_key)["Body"].read())
    assert (progress.phase, progress.rows_done, progress.rows_total) == ("Done", ROWS, ROWS)
    assert progress.rows_skipped == len(before_retry)
    assert f"rows {ROWS}/{ROWS} done (attempt {progress.attempt}" in output, output
    assert any(f"rows {n}/{ROWS} done" in output for n in range(1, ROWS)), output
    assert all(job["metadata"]["ownerReferences"][0]["uid"] == endpoint["metadata"]["uid"]
               for job in rayjobs(sandbox))
