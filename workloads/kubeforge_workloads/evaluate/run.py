"""The driver of an EvalRun: read the question set, measure retrieval of every index in inputs.indexes, have the
endpoint answer and the judge grade every row not already scored by an earlier attempt (`spec.concurrency` rows in
flight, each saved as it completes), then write outputs/result.json and log the run to MLflow.

Generation and judging run on a bounded thread pool in the driver, not Ray Data: the work is HTTP requests to other
services, and on a small CPU cluster a Ray start costs more than a short question set takes (docs/evaluation.md).

Progress counts rows: step = rows done (scored, failed, or reused), totalSteps = rows.
outputs/result.json:
  {"metrics": {name: value}, "rows": {"total", "scored", "failed"}, "resultsUri": "s3://…/outputs/results.jsonl",
   "indexes": {name: {"version", "metrics": {"ndcg@5": …}}}, "mlflowRunId" | "trackingError"}
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from pydantic import ValidationError

from kubeforge.api.evalrun import EvalRunSpec
from kubeforge.api.workload import WorkloadContext
from kubeforge_workloads.common.chaos import stall_point
from kubeforge_workloads.common.endpoints import ChatEndpoint
from kubeforge_workloads.common.errors import UserError
from kubeforge_workloads.common.heartbeat import Heartbeat
from kubeforge_workloads.common.storage import WorkloadStorage, run_entrypoint
from kubeforge_workloads.evaluate.aggregate import headline_metrics, row_counts
from kubeforge_workloads.evaluate.answer import RowPlan, evaluate_row, row_result
from kubeforge_workloads.evaluate.dataset import EvalRow, load_rows
from kubeforge_workloads.evaluate.judge import Criterion, criteria_of
from kubeforge_workloads.evaluate.results import RowSaver, fingerprint, saved_rows, write_results
from kubeforge_workloads.evaluate.retrieval import qrels_of, retrieval_metrics, retrieve


def run(context: WorkloadContext, storage: WorkloadStorage) -> dict:
    try:
        spec = EvalRunSpec.model_validate(context.spec)
    except ValidationError as error:
        raise UserError(f"invalid EvalRun spec: {error}") from None
    heartbeat = Heartbeat(storage.write_progress, context.attempt).start()
    finished = False
    try:
        result = evaluate(context, spec, storage, heartbeat)
        storage.put_json(result, "result.json")
        counts = result["rows"]
        heartbeat.update(message=f"{counts['scored']} of {counts['total']} rows scored, {counts['failed']} failed")
        finished = True
        return result
    finally:
        heartbeat.stop(final_phase="Done" if finished else None)


def evaluate(context: WorkloadContext, spec: EvalRunSpec, storage: WorkloadStorage, heartbeat: Heartbeat) -> dict:
    inputs = context.inputs
    heartbeat.update(phase="Reading", message=f"reading {spec.dataset.uri}")
    rows = load_rows(storage.store, spec.dataset.uri)
    heartbeat.update(step=0, total_steps=len(rows))
    criteria = criteria_of(spec.judge) if spec.judge is not None else []
    plan = _row_plan(spec, inputs, criteria)

    heartbeat.update(phase="Retrieving", message=f"querying {len(inputs.get('indexes') or {})} index(es)")
    retrieved, per_index = _retrieval(spec, inputs.get("indexes") or {}, rows, storage)

    run_fingerprint = fingerprint(context.spec, inputs)
    earlier = saved_rows(storage, run_fingerprint)
    results = {row_id: row for row_id, row in earlier.items() if not row.get("error")}
    if plan is None:  # retrieval only: every row is done once its documents are known
        results = {row.id: row_result(row, {}) for row in rows}
    todo = [row for row in rows if row.id not in results]
    heartbeat.update(phase="Answering", step=len(rows) - len(todo),
                     message=f"answering {len(todo)} rows, {len(rows) - len(todo)} scored by earlier attempts")
    if todo:
        saver = RowSaver(storage, run_fingerprint)
        try:
            for result in _answer_all(todo, plan, retrieved, spec.concurrency):
                results[result["id"]] = result
                saver.add(result)
                heartbeat.update(step=len(results))
                stall_point()
        finally:  # what finished before a failure is kept for the next attempt
            saver.flush()

    heartbeat.update(phase="Writing", step=len(rows))
    table = [{**results[row.id], "retrieved": {name: ids[row.id] for name, ids in retrieved.items()}}
             for row in rows]
    result = {"metrics": headline_metrics(table, criteria, {n: v["metrics"] for n, v in per_index.items()},
                                          answered=plan is not None),
              "rows": row_counts(table), "resultsUri": write_results(storage, table), "indexes": per_index}
    result.update(_track(context, spec, criteria, table, result))
    return result


def _row_plan(spec: EvalRunSpec, inputs: dict, criteria: list[Criterion]):
    if "endpoint" not in inputs:
        if spec.target.endpoint_ref:
            raise UserError("inputs.endpoint is missing although spec.target.endpointRef is set: the operator "
                            "resolves it from the ServingEndpoint; check that it is Ready")
        return None
    judge = None
    if spec.judge is not None:
        if "judge" not in inputs:
            raise UserError("inputs.judge is missing although spec.judge is set: check spec.judge.endpointRef or "
                            "spec.judge.openaiCompatible")
        judge = ChatEndpoint.from_input("judge", inputs["judge"])
    return RowPlan(endpoint=ChatEndpoint.from_input("endpoint", inputs["endpoint"]), max_tokens=spec.max_tokens,
                   judge=judge, criteria=tuple(criteria),
                   judge_temperature=spec.judge.temperature if spec.judge else 0.1,
                   reply_attempts=spec.judge.max_reply_attempts if spec.judge else 1)


def _retrieval(spec: EvalRunSpec, indexes: dict, rows: list[EvalRow], storage: WorkloadStorage):
    """(row id -> top documents, per index) and {index: {"version", "metrics"}}."""
    from kubeforge_workloads.index.query import open_index

    retrieved: dict[str, dict[str, list[str]]] = {}
    per_index: dict[str, dict] = {}
    qrels = qrels_of(rows)
    metrics = [metric.value for metric in spec.retrieval.metrics]
    for name, index_input in sorted(indexes.items()):
        index = open_index(index_input["uri"], version=index_input.get("version"), store=storage.store)
        retrieved[name] = retrieve(index, rows, max(spec.retrieval.k))
        per_index[name] = {"version": index.version,
                           "metrics": retrieval_metrics(qrels, retrieved[name], metrics, spec.retrieval.k)}
    return retrieved, per_index


def _answer_all(rows: list[EvalRow], plan: RowPlan, retrieved: dict, concurrency: int):
    """Row results as they complete, with at most `concurrency` rows in flight (so at most that many requests)."""
    pending = iter(rows)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="kubeforge-eval") as pool:
        running = set()

        def submit_next() -> None:
            row = next(pending, None)
            if row is not None:
                running.add(pool.submit(evaluate_row, row, plan,
                                        {name: ids[row.id] for name, ids in retrieved.items()}))

        for _ in range(concurrency):
            submit_next()
        try:
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    running.discard(future)
                    yield future.result()
                    submit_next()
        finally:
            for future in running:
                future.cancel()


def _track(context: WorkloadContext, spec: EvalRunSpec, criteria: list[Criterion], rows: list[dict],
           result: dict) -> dict:
    """{"mlflowRunId": id}, or {"trackingError": why}: the results are in the object store either way, so an
    MLflow outage is reported, not a failed run."""
    from kubeforge_workloads.common.tracking import tracked
    from kubeforge_workloads.evaluate.tracking import log_evaluation

    return tracked("the evaluation", lambda: log_evaluation(context, spec, criteria, rows, result))


def main() -> None:
    run_entrypoint(run, "EvalRun")
