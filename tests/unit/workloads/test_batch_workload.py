"""The batch inference workload without Ray: one block generated and committed as one shard (one result per row,
JSON parsed when the answer is JSON), and a run whose shards all exist generates nothing and leaves them as
they are."""

from __future__ import annotations

import json

import boto3
import pytest

from kubeforge.api.batchinference import BatchInference, BatchProgress, shard_name
from kubeforge.api.serveapp import ServeAppConfig
from kubeforge.api.workload import MlflowContext, StorageContext, WorkloadContext
from kubeforge.storage.layout import ResourcePrefix
from tests.unit.workloads.conftest import BUCKET

TEMPLATE = "Review: {input}\nJSON:"


@pytest.fixture
def tiny_llama(object_store, tmp_path):
    from kubeforge_workloads.common.storage import upload_tree
    from kubeforge_workloads.seed.build import build_tiny_llama

    upload_tree(boto3.client("s3"), build_tiny_llama(tmp_path / "tiny"), BUCKET, "models/tiny/")
    return f"s3://{BUCKET}/models/tiny"


def app(model_uri: str) -> ServeAppConfig:
    return ServeAppConfig.model_validate({
        "endpoint": "ns/assistant", "base": {"name": "assistant", "uri": model_uri},
        "engine": {"kind": "transformers", "max_num_seqs": 3}, "max_tokens": 16,
        "templates": [{"name": "reviews", "template": TEMPLATE, "system": "Answer with JSON.",
                       "parameters": {"temperature": 0, "max_tokens": 6}}]})


def upload_rows(rows: list[dict]) -> str:
    boto3.client("s3").put_object(Bucket=BUCKET, Key="in/reviews.jsonl",
                                  Body="".join(json.dumps(r) + "\n" for r in rows).encode())
    return f"s3://{BUCKET}/in/reviews.jsonl"


def request(input_uri: str, block_rows: int = 4) -> BatchInference:
    return BatchInference(id="b1", template="reviews", model="assistant", input=input_uri,
                          output=f"s3://{BUCKET}/out/", id_column="id", block_rows=block_rows)


def shards() -> dict[str, str]:
    listed = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="out/").get("Contents", [])
    return {item["Key"]: item["ETag"] for item in listed}


def test_a_block_is_generated_in_batches_and_committed_as_one_shard_with_one_result_per_row(object_store,
                                                                                         tiny_llama):
    from kubeforge_workloads.batch.run import BlockWorker, read_table

    rows = [{"id": f"r{i}", "text": f"great kettle number {i}"} for i in range(5)]
    batch = request(upload_rows(rows))
    worker = BlockWorker(app(tiny_llama).model_dump_json(), batch.model_dump_json())
    table = read_table(object_store, batch.input)
    out = worker({"start": [4], "rows": [json.dumps(table[4:8])]})  # the last block: one row
    out = worker({"start": [0], "rows": [json.dumps(table[0:4])]})  # four rows: two generate calls (3 + 1)
    assert out == {"start": [0], "count": [4]}
    assert sorted(shards()) == ["out/" + shard_name(0), "out/" + shard_name(4)]
    results = [json.loads(line) for key in sorted(shards())
               for line in object_store.get(BUCKET, key).decode().splitlines()]
    assert [(r["row"], r["id"]) for r in results] == [(i, f"r{i}") for i in range(5)]
    assert all(isinstance(r["text"], str) and r["text"] for r in results)
    # Greedy and batched: the same block again gives the same texts.
    again = worker({"start": [0], "rows": [json.dumps(table[0:4])]})
    assert again["count"] == [4]
    assert [json.loads(line)["text"] for line in object_store.get(BUCKET, "out/" + shard_name(0)).decode()
            .splitlines()] == [r["text"] for r in results[:4]]


def test_a_run_whose_shards_all_exist_generates_nothing_and_reports_every_row_done(object_store):
    from kubeforge_workloads.batch.run import run, write_shard

    rows = [{"id": f"r{i}", "text": f"review {i}"} for i in range(6)]
    batch = request(upload_rows(rows), block_rows=4)
    for start in (0, 4):
        write_shard(object_store, batch.output, start,
                    [{"row": i, "id": f"r{i}", "text": "{}", "json": {}} for i in range(start, min(start + 4, 6))])
    before = shards()
    context = WorkloadContext(kind="ServingEndpoint", namespace="ns", name="assistant", uid="u", generation=1,
                              attempt=2, spec={}, storage=StorageContext(bucket=BUCKET, prefix="ns/se/assistant"),
                              mlflow=MlflowContext(experiment="e", run_name="r"),
                              inputs={"batch": batch.model_dump(mode="json"),
                                      "app": app("s3://nowhere/model").model_dump(mode="json")})
    run(context, object_store)  # would fail loading s3://nowhere/model if it generated anything
    assert shards() == before
    progress = BatchProgress.model_validate_json(
        object_store.get(BUCKET, ResourcePrefix(BUCKET, "ns/se/assistant").batch_progress_key("b1")))
    assert (progress.phase, progress.rows_done, progress.rows_total, progress.rows_skipped, progress.attempt) == \
        ("Done", 6, 6, 6, 2)


def test_answers_that_are_json_are_parsed_and_others_kept_as_text():
    from kubeforge_workloads.batch.generate import parse_answer

    assert parse_answer(' {"sentiment": "positive"}') == {"sentiment": "positive"}
    assert parse_answer('Sure: {"sentiment": "negative", "topics": []} hope it helps') == {
        "sentiment": "negative", "topics": []}
    assert parse_answer("positive, I think") is None


def test_a_missing_column_fails_naming_the_row_and_the_flag(object_store):
    from kubeforge_workloads.batch.generate import input_texts
    from kubeforge_workloads.common.errors import DataError

    with pytest.raises(DataError, match=r"row 7 has no text column 'text' \(columns: \['body'\]\): .*--column"):
        input_texts([{"body": "x"}], "text", 7)
