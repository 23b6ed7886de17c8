"""The run's headline numbers from its row results, named as kubeforge.api.evalrun documents them."""

from __future__ import annotations

from kubeforge_workloads.evaluate.judge import Criterion


def row_counts(rows: list[dict]) -> dict[str, int]:
    failed = sum(1 for row in rows if row.get("error"))
    return {"total": len(rows), "scored": len(rows) - failed, "failed": failed}


def judge_metrics(rows: list[dict], criteria: list[Criterion]) -> dict[str, float]:
    """judge/score (mean weighted score) and judge/<criterion> (mean score) over the scored rows."""
    scored = [row for row in rows if not row.get("error") and row.get("score") is not None]
    if not scored or not criteria:
        return {}
    metrics = {"judge/score": sum(row["score"] for row in scored) / len(scored)}
    for criterion in criteria:
        metrics[f"judge/{criterion.name}"] = sum(row["scores"][criterion.name] for row in scored) / len(scored)
    return metrics


def latency_metrics(rows: list[dict]) -> dict[str, float]:
    """p50 and p95 of the endpoint's answer latency (linear interpolation) over the answered rows."""
    import numpy as np

    seconds = [row["latency_seconds"] for row in rows if row.get("latency_seconds") is not None]
    if not seconds:
        return {}
    return {"latency/p50Seconds": float(np.percentile(seconds, 50)),
            "latency/p95Seconds": float(np.percentile(seconds, 95))}


def retrieval_metric_names(per_index: dict[str, dict[str, float]]) -> dict[str, float]:
    """retrieval/<index>/<metric>@<k>, and retrieval/<metric>@<k> too when exactly one index is evaluated."""
    metrics = {f"retrieval/{index}/{name}": value for index, values in per_index.items()
               for name, value in values.items()}
    if len(per_index) == 1:
        (values,) = per_index.values()
        metrics.update({f"retrieval/{name}": value for name, value in values.items()})
    return metrics


def headline_metrics(rows: list[dict], criteria: list[Criterion], per_index: dict[str, dict[str, float]],
                     answered: bool) -> dict[str, float]:
    counts = row_counts(rows)
    metrics = {**judge_metrics(rows, criteria), **retrieval_metric_names(per_index),
               "rows/failedFraction": counts["failed"] / counts["total"] if counts["total"] else 0.0}
    if answered:
        metrics.update(latency_metrics(rows))
    return dict(sorted(metrics.items()))
