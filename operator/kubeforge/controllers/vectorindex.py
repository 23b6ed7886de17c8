"""VectorIndex: a kind that runs again. Each sync is a run (a build RayJob) that writes the next version;
the index stays Ready on its current version while a sync works, and syncs on a spec change (syncGeneration
included) and every sync.interval."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from kubeforge.api.kinds import kind_info
from kubeforge.api.vectorindex import VectorIndexSpec
from kubeforge.controllers.batch import KindBase
from kubeforge.resilience import parse_duration

OUTPUT_KEYS = ("version", "documents", "chunks", "indexUri", "metric", "dims", "type", "model", "recall", "recallK",
               "minRecall", "sync", "unchanged", "skippedDocuments", "mlflowRunId", "trackingError", "buildSeconds")


class VectorIndexKind(KindBase):
    info = kind_info("VectorIndex")
    progress_unit = "documents"

    def output(self, result: dict) -> dict:
        return {key: result[key] for key in OUTPUT_KEYS if result.get(key) is not None}

    def next_run_at(self, spec: VectorIndexSpec, last_run_end: Optional[datetime]) -> Optional[datetime]:
        if not spec.sync.interval or last_run_end is None:
            return None
        return last_run_end + parse_duration(spec.sync.interval)

    def summary(self, spec: VectorIndexSpec, result: dict, finished_at: str) -> dict:
        return {"currentVersion": result.get("version"), "documents": result.get("documents"),
                "chunks": result.get("chunks"), "lastSyncTime": result.get("lastSyncTime") or finished_at,
                "quality": {f"recallAt{result.get('recallK', 10)}": result.get("recall")},
                "skipped": result.get("skipped") or {}}

    def conditions(self, spec: VectorIndexSpec, result: dict) -> list[tuple[str, bool, str, str]]:
        recall, minimum = result.get("recall"), result.get("minRecall")
        if recall is None or minimum is None:
            return []
        k = result.get("recallK", 10)
        if recall < minimum:
            return [("Degraded", True, "RecallBelowMinimum",
                     f"recall@{k} of the approximate index is {recall} against exact search, below "
                     f"spec.index.minRecall {minimum}: raise index.hnsw.efSearch or m, or use type flat")]
        return [("Degraded", False, "RecallMet", f"recall@{k} {recall} >= minRecall {minimum}")]

    def ready_message(self, status: dict, run_number: int) -> str:
        return (f"version {status.get('currentVersion')} ready: {status.get('documents')} documents, "
                f"{status.get('chunks')} chunks (sync {run_number})")
