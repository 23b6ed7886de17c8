"""MLflow: one run per EvalRun (continued by every attempt), holding the aggregates as metrics, the per-row table
as an MLflow table artifact, and each criterion's judge prompt as a text artifact.

MLflow metric names may not contain '@': retrieval/ndcg@5 is logged as retrieval/ndcg_at_5.
"""

from __future__ import annotations

import json

from kubeforge.api.evalrun import EvalRunSpec
from kubeforge.api.workload import WorkloadContext
from kubeforge_workloads.common.tracking import start_run
from kubeforge_workloads.evaluate.judge import Criterion, prompt_template

ROWS_TABLE = "eval/rows.json"
PROMPTS_DIR = "eval/judge_prompts"


def mlflow_metric_name(name: str) -> str:
    return name.replace("@", "_at_")


def run_params(spec: EvalRunSpec, inputs: dict, criteria: list[Criterion]) -> dict:
    params = {"dataset_uri": spec.dataset.uri, "concurrency": spec.concurrency, "max_tokens": spec.max_tokens,
              "retrieval_k": ",".join(str(k) for k in sorted(spec.retrieval.k)),
              "retrieval_metrics": ",".join(m.value for m in spec.retrieval.metrics)}
    if "endpoint" in inputs:
        params.update(endpoint=inputs["endpoint"].get("name"), endpoint_model=inputs["endpoint"]["model"])
    if "judge" in inputs and spec.judge is not None:
        params.update(judge_model=inputs["judge"]["model"], judge_temperature=spec.judge.temperature,
                      judge_criteria=",".join(f"{c.name}:{c.weight:.4g}" for c in criteria))
    for name, index in sorted((inputs.get("indexes") or {}).items()):
        params[f"index_{name}_version"] = index["version"]
    return params


def table_columns(rows: list[dict], criteria: list[Criterion]) -> dict[str, list]:
    """The per-row table, one column per field and per criterion (nested values as JSON text)."""
    columns: dict[str, list] = {name: [] for name in (
        "id", "question", "expected_answer", "answer", "retrieved", "score", "latency_seconds", "prompt_tokens",
        "completion_tokens", "error", "raw_reply")}
    for criterion in criteria:
        columns[f"{criterion.name}_score"] = []
        columns[f"{criterion.name}_justification"] = []
    for row in rows:
        for name in ("id", "question", "expected_answer", "answer", "score", "latency_seconds", "prompt_tokens",
                     "completion_tokens", "error", "raw_reply"):
            columns[name].append(row.get(name))
        columns["retrieved"].append(json.dumps(row.get("retrieved") or {}, sort_keys=True))
        for criterion in criteria:
            columns[f"{criterion.name}_score"].append((row.get("scores") or {}).get(criterion.name))
            columns[f"{criterion.name}_justification"].append((row.get("justifications") or {}).get(criterion.name))
    return columns


def log_evaluation(context: WorkloadContext, spec: EvalRunSpec, criteria: list[Criterion], rows: list[dict],
                   result: dict) -> str:
    """Log the run; returns its id."""
    import mlflow

    run_id = start_run(context, run_params(spec, context.inputs, criteria))
    try:
        mlflow.log_metrics({mlflow_metric_name(name): float(value) for name, value in result["metrics"].items()})
        mlflow.log_metrics({f"rows/{name}": float(value) for name, value in result["rows"].items()})
        mlflow.log_table(data=table_columns(rows, criteria), artifact_file=ROWS_TABLE)
        for criterion in criteria:
            mlflow.log_text(prompt_template(criterion), f"{PROMPTS_DIR}/{criterion.name}.txt")
        mlflow.end_run("FINISHED")
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    return run_id
