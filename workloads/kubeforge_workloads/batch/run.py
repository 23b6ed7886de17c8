"""The driver of a batch inference run: read the table, skip the blocks whose shard is already written, generate
the rest with Ray Data (one actor holding the endpoint's weights, one block per call) and commit each block's
results as one shard object, then its progress. A rerun after a kill therefore redoes at most the blocks that
were in flight."""

from __future__ import annotations

import io
import json
import time
from typing import Optional

from kubeforge.api.batchinference import BatchInference, BatchProgress, block_starts, pending_blocks, shard_name
from kubeforge.api.serveapp import ServeAppConfig
from kubeforge.api.workload import WorkloadContext
from kubeforge.storage.layout import ResourcePrefix, parse_s3_uri
from kubeforge_workloads.batch.generate import (
    TransformersBlockGenerator, VllmBlockGenerator, adapter_of, find_template, input_texts, messages_for,
    parse_answer, sampling_defaults,
)
from kubeforge_workloads.common.errors import DataError, UserError, run_workload
from kubeforge_workloads.common.storage import utcnow


def read_table(store, uri: str) -> list[dict]:
    bucket, key = parse_s3_uri(uri)
    raw = store.get(bucket, key)
    if raw is None:
        raise UserError(f"--input {uri} does not exist: upload the table first")
    if key.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(raw)).to_pylist()
    if key.endswith((".jsonl", ".json")):
        rows = []
        for number, line in enumerate(raw.decode().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as error:
                    raise DataError(f"--input {uri} line {number} is not JSON ({error}): one object per line") \
                        from None
        return rows
    raise UserError(f"--input {uri}: use a .jsonl or .parquet table")


def output_prefix(uri: str) -> tuple[str, str]:
    bucket, key = parse_s3_uri(uri)
    return bucket, (key.rstrip("/") + "/") if key else ""


def written_shards(store, output_uri: str) -> list[str]:
    bucket, prefix = output_prefix(output_uri)
    return list(store.list(bucket, prefix))


def results(rows: list[dict], first_row: int, texts: list[str], id_column: Optional[str]) -> list[dict]:
    return [{"row": first_row + offset, "id": row.get(id_column) if id_column else None, "text": text,
             "json": parse_answer(text)} for offset, (row, text) in enumerate(zip(rows, texts))]


def write_shard(store, output_uri: str, first_row: int, block: list[dict]) -> None:
    """One PUT: S3 makes the object visible whole or not at all, so an existing shard is a committed block."""
    bucket, prefix = output_prefix(output_uri)
    body = "".join(json.dumps(result, sort_keys=True) + "\n" for result in block)
    store.put(bucket, prefix + shard_name(first_row), body.encode())


class BlockWorker:
    """Ray Data actor: loads the endpoint's weights once, then generates and commits one block per row it gets."""

    def __init__(self, app_json: str, batch_json: str):
        from kubeforge.storage.objectstore import S3ObjectStore
        from kubeforge_workloads.serve.app import load_engine

        self.app = ServeAppConfig.model_validate_json(app_json)
        self.batch = BatchInference.model_validate_json(batch_json)
        self.template = find_template(self.app, self.batch.template)
        adapter = adapter_of(self.app, self.batch.model)
        temperature, max_tokens, stop = sampling_defaults(self.app, self.template)
        self.store = S3ObjectStore()
        if self.app.engine.kind == "vllm":
            import tempfile
            from pathlib import Path

            from kubeforge_workloads.serve.weights import adapter_dir, model_dir

            cache = Path(tempfile.mkdtemp(prefix="kubeforge-batch-"))
            base = model_dir(self.app.base.uri, cache / "base", self.store)
            adapters = {a.name: adapter_dir(a.uri, cache / "adapters" / a.name, self.store, a.name)
                        for a in self.app.adapters}
            self.generate = VllmBlockGenerator(self.app, base, adapters, adapter, temperature, max_tokens, stop)
        else:
            engine = load_engine(self.app, store=self.store)
            engine.close()  # only its model and tokenizer are used: no dynamic-batching thread needed
            self.generate = TransformersBlockGenerator(engine, adapter, temperature, max_tokens, stop)

    def __call__(self, batch: dict) -> dict:
        counts = []
        for first_row, rows_json in zip(batch["start"], batch["rows"]):
            rows = json.loads(rows_json)
            texts = self.generate([messages_for(self.template, text)
                                   for text in input_texts(rows, self.batch.column, int(first_row))])
            write_shard(self.store, self.batch.output, int(first_row),
                        results(rows, int(first_row), texts, self.batch.id_column))
            counts.append(len(rows))
        return {"start": list(batch["start"]), "count": counts}


def run(context: WorkloadContext, store) -> None:
    batch = BatchInference.model_validate(context.inputs["batch"])
    app = ServeAppConfig.model_validate(context.inputs["app"])
    template = find_template(app, batch.template)
    adapter_of(app, batch.model)
    prefix = ResourcePrefix(context.storage.bucket, context.storage.prefix)
    rows = read_table(store, batch.input)
    # A bad column or template fails here, before any weights are loaded.
    for text in input_texts(rows, batch.column, 0)[:1]:
        messages_for(template, text)
    pending = pending_blocks(len(rows), batch.block_rows, written_shards(store, batch.output))
    block_size = {start: len(rows[start:start + batch.block_rows]) for start in block_starts(len(rows),
                                                                                             batch.block_rows)}
    skipped = len(rows) - sum(block_size[start] for start in pending)
    done = skipped

    def report(phase: str) -> None:
        progress = BatchProgress(attempt=context.attempt, phase=phase, rows_done=done, rows_total=len(rows),
                                 rows_skipped=skipped, updated_at=utcnow())
        store.put(prefix.bucket, prefix.batch_progress_key(batch.id), progress.model_dump_json(by_alias=True).encode())
        print(f"kubeforge batch: {phase} {done}/{len(rows)} rows ({skipped} already written)", flush=True)

    report("Loading")
    if pending:
        import ray

        items = [{"start": start, "rows": json.dumps(rows[start:start + batch.block_rows])} for start in pending]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        worker_args = {"app_json": app.model_dump_json(), "batch_json": batch.model_dump_json()}
        generated = dataset.map_batches(BlockWorker, fn_constructor_kwargs=worker_args, batch_size=1, concurrency=1,
                                        num_cpus=1, num_gpus=app.gpus_per_replica or None)
        for block in generated.iter_rows():
            done += int(block["count"])
            report("Generating")
    report("Done")


def main() -> None:
    from kubeforge.storage.objectstore import S3ObjectStore

    context = WorkloadContext.from_env()
    started = time.monotonic()
    # No failure report: attempts/<n>/ under the endpoint's prefix belongs to the operator's kinds; the CLI reads
    # the RayJob's status and the driver log instead.
    run_workload(lambda: run(context, S3ObjectStore()), lambda code, reason, message, tail: None)
    print(f"kubeforge: batch inference finished in {time.monotonic() - started:.1f}s", flush=True)
