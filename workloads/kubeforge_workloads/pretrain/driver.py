"""The Ray driver: validate early (fail fast on user errors), then run the pretraining loop under Ray Train
(common/raytrain.py: heartbeat hand-over, in-job worker restarts, exit codes)."""

from __future__ import annotations

from typing import Callable

from pydantic import ValidationError

from kubeforge.api.trainingjob import TextFormat, TrainingJobSpec
from kubeforge.api.workload import WorkloadContext
from kubeforge.storage.layout import parse_s3_uri
from kubeforge_workloads.common.errors import UserError
from kubeforge_workloads.common.raytrain import Workers, fit, run_driver, worker_restarts
from kubeforge_workloads.common.storage import WorkloadStorage


def preflight(spec: TrainingJobSpec, storage: WorkloadStorage) -> None:
    """Checks that need no worker: what this workload does not do yet, and the data being there."""
    if spec.precompute is not None and spec.precompute.enabled:
        raise UserError("spec.precompute is not supported by this workload version yet: remove it (the text is "
                        "tokenized and packed at start-up)")
    if spec.dataset.format == TextFormat.TOKENIZED_SHARDS:
        raise UserError("spec.dataset.format tokenized-shards is not supported by this workload version yet: "
                        "use jsonl-text")
    bucket, key = parse_s3_uri(spec.dataset.uri)
    if not any(True for _ in storage.store.list(bucket, key)):
        raise UserError(f"spec.dataset.uri {spec.dataset.uri} does not exist in the object store")


def prepare(context: WorkloadContext, storage: WorkloadStorage) -> Callable[[], None]:
    try:
        spec = TrainingJobSpec.model_validate(context.spec)
    except ValidationError as error:
        raise UserError(f"invalid TrainingJob spec: {error}") from None
    preflight(spec, storage)
    restarts = worker_restarts()
    resources = spec.resources

    def train() -> None:
        from kubeforge_workloads.pretrain.train import train_loop

        fit(train_loop, context, Workers(resources.workers, resources.cpus_per_worker, resources.gpus_per_worker),
            max_failures=restarts)

    return train


def main() -> None:
    run_driver(prepare)
