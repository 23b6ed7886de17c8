"""MLflow: one run per VectorIndex sync, in the resource's experiment, with what the sync did (documents, chunks,
skipped, embedded and reused counts, build seconds, recall) and the version's manifest as an artifact.

A sync that built version N logs into the run tagged with that version when one exists (an attempt killed after
committing N but before its result was recorded is retried), so a version never has two runs. A sync that found
nothing changed gets a run of its own, tagged kubeforge.unchanged.
"""

from __future__ import annotations

from typing import Optional

from kubeforge.api.vectorindex import VectorIndexSpec
from kubeforge.api.workload import WorkloadContext
from kubeforge_workloads.common.tracking import ensure_experiment

VERSION_TAG = "kubeforge.indexVersion"
UNCHANGED_TAG = "kubeforge.unchanged"
MANIFEST_ARTIFACT = "index/MANIFEST.json"


def sync_params(spec: VectorIndexSpec, result: dict) -> dict:
    chunking, embedding, index = spec.chunking, spec.embedding, spec.index
    return {"version": result["version"], "embedding_model": embedding.model, "embedding_batch_size":
            embedding.batch_size, "embedding_normalize": embedding.normalize, "chunking_strategy":
            chunking.strategy.value, "chunking_size": chunking.size, "chunking_overlap": chunking.overlap,
            "index_metric": index.metric.value, "index_type": index.type.value, "dims": result["dims"],
            "keep_versions": spec.keep_versions, "sync_generation": spec.sync_generation,
            "source_uri": spec.source.uri}


def sync_metrics(result: dict, build_seconds: float) -> dict[str, float]:
    sync = result["sync"]
    metrics = {"documents": result["documents"], "chunks": result["chunks"], "version": result["version"],
               "skipped_documents": result["skippedDocuments"], "build_seconds": round(build_seconds, 3),
               f"recall_at_{result['recallK']}": result["recall"],
               "embedded_documents": sync["embeddedDocuments"], "reused_documents": sync["reusedDocuments"],
               "deleted_documents": sync["deletedDocuments"], "embedded_chunks": sync["embeddedChunks"],
               "resumed_chunks": sync["resumedChunks"], "reused_chunks": sync["reusedChunks"]}
    metrics.update({f"skipped_{cause}": entry["count"] for cause, entry in result["skipped"].items()})
    metrics.update({f"seconds_{phase}": value for phase, value in (result.get("phaseSeconds") or {}).items()})
    if build_seconds > 0:
        metrics["embedded_chunks_per_second"] = round(sync["embeddedChunks"] / build_seconds, 3)
    return {key: float(value) for key, value in metrics.items()}


def log_sync(context: WorkloadContext, spec: VectorIndexSpec, result: dict, manifest: dict,
             build_seconds: float) -> str:
    """Log one sync; returns the run id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    if context.mlflow.tracking_uri:
        mlflow.set_tracking_uri(context.mlflow.tracking_uri)
    client = MlflowClient()
    experiment_id = ensure_experiment(client, context.mlflow.experiment)
    version, unchanged = str(result["version"]), bool(result["unchanged"])
    run_id: Optional[str] = None
    if not unchanged:
        found = client.search_runs([experiment_id], max_results=1, filter_string=(
            f"tags.`kubeforge.uid` = '{context.uid}' AND tags.`{VERSION_TAG}` = '{version}' "
            f"AND tags.`{UNCHANGED_TAG}` = 'false'"))
        run_id = found[0].info.run_id if found else None
    if run_id is None:
        run = client.create_run(experiment_id, run_name=f"{context.mlflow.run_name}-v{version}", tags={
            "kubeforge.uid": context.uid, "kubeforge.kind": context.kind, "kubeforge.namespace": context.namespace,
            "kubeforge.name": context.name, VERSION_TAG: version, UNCHANGED_TAG: str(unchanged).lower()})
        run_id = run.info.run_id
        client.log_batch(run_id, params=_params(sync_params(spec, result)))
    client.set_tag(run_id, "kubeforge.attempt", str(context.attempt))
    client.set_tag(run_id, "kubeforge.generation", str(context.generation))
    client.log_batch(run_id, metrics=_metrics(sync_metrics(result, build_seconds)))
    client.log_dict(run_id, manifest, MANIFEST_ARTIFACT)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _params(values: dict) -> list:
    from mlflow.entities import Param

    return [Param(key, str(value)) for key, value in values.items()]


def _metrics(values: dict[str, float]) -> list:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, value, now, 0) for key, value in values.items()]
