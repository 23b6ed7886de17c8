"""The Ray driver: validate early (fail fast on user errors), then run the pretraining loop under Ray Train
(common/raytrain.py: heartbeat hand-over, in-job worker restarts, exit codes)."""

from __future__ import annotations

from kubeforge.api.trainingjob import DatasetFormat, TrainingJobSpec
from kubeforge.storage.layout import parse_s3_uri
from kubeforge_workloads.common.errors import UserError
from kubeforge_workloads.common.raytrain import run_train_driver
from kubeforge_workloads.common.storage import WorkloadStorage
from kubeforge_workloads.pretrain.goodput import record_first_start


def preflight(spec: TrainingJobSpec, storage: WorkloadStorage) -> None:
    """Checks that need no worker: what this workload does not do yet, and the data being there."""
    if spec.precompute is not None and spec.precompute.enabled:
        raise UserError("spec.precompute is not supported by this workload version yet: remove it (the text is "
                        "tokenized and packed at start-up)")
    if spec.dataset.format == DatasetFormat.TOKENIZED_SHARDS:
        raise UserError("spec.dataset.format tokenized-shards is not supported by this workload version yet: "
                        "use jsonl-text")
    bucket, key = parse_s3_uri(spec.dataset.uri)
    if not any(True for _ in storage.store.list(bucket, key)):
        raise UserError(f"spec.dataset.uri {spec.dataset.uri} does not exist in the object store")
    record_first_start(storage)  # goodput's wall time counts from the first attempt's driver, not its workers


def main() -> None:
    run_train_driver(TrainingJobSpec, preflight, "kubeforge_workloads.pretrain.train")
