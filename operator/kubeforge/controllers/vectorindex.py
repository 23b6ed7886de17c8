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

OUTPUT_KEYS = ("version", "documents", "chunks", "indexUri", "metric", "dims", "recall", "embeddedDocuments",
               "reusedDocuments", "deletedDocuments", "skipped")


class VectorIndexKind(KindBase):
    info = kind_info("VectorIndex")
    progress_unit = "documents"

    def output(self, result: dict) -> dict:
        return {key: result[key] for key in OUTPUT_KEYS if result.get(key) is not None}

    def next_run_at(self, spec: VectorIndexSpec, last_run_end: Optional[datetime]) -> Optional[datetime]:
        if not spec.sync.interval or last_run_end is None:
            return None
        return last_run_end + parse_duration(spec.sync.interval)

    def summary(self, result: dict, finished_at: str) -> dict:
        return {"currentVersion": result.get("version"), "documents": result.get("documents"),
                "chunks": result.get("chunks"), "lastSyncTime": finished_at}

    def ready_message(self, status: dict, run_number: int) -> str:
        return (f"version {status.get('currentVersion')} ready: {status.get('documents')} documents, "
                f"{status.get('chunks')} chunks (sync {run_number})")
