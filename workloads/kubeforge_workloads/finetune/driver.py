"""The Ray driver: validate early (fail fast on user errors), then run the training loop under Ray Train."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydantic import ValidationError

from kubeforge.api.finetune import FineTuneSpec, Method
from kubeforge.api.workload import CONTEXT_ENV, WorkloadContext
from kubeforge_workloads.common.errors import UserError, run_workload
from kubeforge_workloads.common.heartbeat import Heartbeat
from kubeforge_workloads.common.storage import WorkloadStorage, object_exists


def preflight(spec: FineTuneSpec, storage: WorkloadStorage) -> None:
    """Checks that need no GPU and no model: data present and well-formed, model directory present."""
    from kubeforge_workloads.finetune.data import load_examples

    if spec.method == Method.QLORA and spec.resources.gpus_per_worker < 1:
        raise UserError("spec.method qlora needs GPUs (bitsandbytes 4-bit): set resources.gpusPerWorker >= 1 "
                        "or use method lora")
    cache = Path(tempfile.mkdtemp(prefix="kubeforge-preflight-"))
    load_examples(spec, cache, storage.store)
    if spec.base_model.uri.startswith("s3://"):
        from kubeforge.storage.layout import parse_s3_uri

        bucket, key = parse_s3_uri(spec.base_model.uri)
        if not object_exists(storage.store, bucket, key.rstrip("/") + "/config.json"):
            raise UserError(f"spec.baseModel.uri {spec.base_model.uri} has no config.json: "
                            "point it at a Hugging Face model directory")


def init_ray(cpus_needed: float) -> None:
    """Join the cluster when run as a RayJob entrypoint (RAY_ADDRESS is set), else start a local Ray."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init(address="auto", ignore_reinit_error=True, log_to_driver=True)
        return
    cpus = int(os.environ.get("KUBEFORGE_LOCAL_RAY_CPUS") or max(os.cpu_count() or 1, int(cpus_needed + 0.999)))
    ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=256 * 1024 * 1024,
             ignore_reinit_error=True, log_to_driver=True)


def run(context: WorkloadContext, storage: WorkloadStorage) -> None:
    try:
        spec = FineTuneSpec.model_validate(context.spec)
    except ValidationError as error:
        raise UserError(f"invalid FineTune spec: {error}") from None

    started = {"training": False}

    def driver_may_beat() -> bool:
        # The driver beats only until a worker takes over; after that a stuck worker must look stuck.
        progress = storage.read_progress()
        taken = progress is not None and progress.attempt == context.attempt and progress.phase != "Starting"
        started["training"] = started["training"] or taken
        return not started["training"]

    heartbeat = Heartbeat(storage.write_progress, context.attempt, keep_going=driver_may_beat).start()
    try:
        preflight(spec, storage)
        fit(context, spec)
    finally:
        heartbeat.stop()


def fit(context: WorkloadContext, spec: FineTuneSpec) -> None:
    """Run train_loop on resources.workers Ray Train workers (gloo on CPU, NCCL on GPU: TorchTrainer's default)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from kubeforge_workloads.finetune.train import train_loop

    resources = spec.resources
    init_ray(resources.workers * resources.cpus_per_worker)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"context": context.model_dump(mode="json"),
                           "env": {k: v for k, v in os.environ.items()
                                   if k.startswith("KUBEFORGE_") and k != CONTEXT_ENV}},
        scaling_config=ScalingConfig(num_workers=resources.workers, use_gpu=resources.gpus_per_worker > 0,
                                     resources_per_worker={"CPU": resources.cpus_per_worker,
                                                           **({"GPU": resources.gpus_per_worker}
                                                              if resources.gpus_per_worker else {})}),
        # Kubeforge owns retries across attempts (new RayJob, resume from the S3 checkpoint).
        run_config=RunConfig(name=f"{context.name}-{context.attempt}", failure_config=FailureConfig(max_failures=0),
                             storage_path=str(Path(tempfile.gettempdir()) / "kubeforge-ray-train")),
    )
    trainer.fit()


def main() -> None:
    context = WorkloadContext.from_env()
    storage = WorkloadStorage(context)
    run_workload(lambda: run(context, storage), storage.write_failure)
