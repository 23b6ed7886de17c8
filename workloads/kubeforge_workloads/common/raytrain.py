"""The Ray Train driver every training kind shares: Ray init, the driver's heartbeat until a worker takes over,
TorchTrainer.fit with in-job worker recovery, and exit codes (DESIGN.md §3.4: Ray Train absorbs worker failures
first; only a dead job goes back to the operator).

A worker that dies (SIGKILL, lost node) costs one of `max_failures` in-job restarts: Ray Train starts a new worker
group inside the same attempt and the training loop resumes from the latest committed checkpoint in the object
store. A failure no restart can fix (UserError, DataError, NodeCheckFailed) is recorded by the worker for the
attempt; the restarted group replays it at once instead of running again, so it reaches the operator after a few
seconds per remaining restart instead of a whole reload each.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from pydantic import ValidationError

from kubeforge.api.workload import CONTEXT_ENV, ExitCode, WorkloadContext
from kubeforge_workloads.common.errors import DataError, NodeCheckError, UserError, classify_exception, run_workload
from kubeforge_workloads.common.heartbeat import Heartbeat
from kubeforge_workloads.common.storage import WorkloadStorage

WORKER_RESTARTS_ENV = "KUBEFORGE_WORKER_RESTARTS"
DEFAULT_WORKER_RESTARTS = 2
"""In-job restarts of the worker group per attempt (Ray Train's FailureConfig.max_failures). Set per resource
through spec.ray.runtimeEnv.env_vars; 0 hands every worker failure to the operator as a failed attempt."""
UNRECOVERABLE = {int(ExitCode.USER_ERROR): UserError, int(ExitCode.DATA_ERROR): DataError,
                 int(ExitCode.NODE_CHECK_FAILED): NodeCheckError}
"""Failures a restarted worker group would only repeat, by exit code."""


@dataclass(frozen=True)
class Workers:
    count: int
    cpus_per_worker: float
    gpus_per_worker: float = 0


def worker_restarts() -> int:
    raw = os.environ.get(WORKER_RESTARTS_ENV)
    if raw is None or raw == "":
        return DEFAULT_WORKER_RESTARTS
    try:
        restarts = int(raw)
    except ValueError:
        restarts = -1
    if restarts < 0:
        raise UserError(f"{WORKER_RESTARTS_ENV}={raw!r} (spec.ray.runtimeEnv.env_vars) must be a whole number >= 0")
    return restarts


def init_ray(cpus_needed: float) -> None:
    """Join the cluster when run as a RayJob entrypoint (RAY_ADDRESS is set), else start a local Ray."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init(address="auto", ignore_reinit_error=True, log_to_driver=True)
        return
    cpus = int(os.environ.get("KUBEFORGE_LOCAL_RAY_CPUS") or max(os.cpu_count() or 1, int(cpus_needed + 0.999)))
    ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=256 * 1024 * 1024,
             ignore_reinit_error=True, log_to_driver=True)


def driver_heartbeat(storage: WorkloadStorage) -> Heartbeat:
    """The driver beats `Starting` only until a worker's first beat of this attempt: after that a stuck worker
    must look stuck, so the driver never beats again (also not while Ray Train restarts the worker group)."""
    attempt = storage.context.attempt
    taken = {"over": False}

    def may_beat() -> bool:
        progress = storage.read_progress()
        taken["over"] = taken["over"] or (progress is not None and progress.attempt == attempt
                                          and progress.phase != "Starting")
        return not taken["over"]

    return Heartbeat(storage.write_progress, attempt, keep_going=may_beat).start()


def worker_config(context: WorkloadContext, **extra) -> dict:
    """What every worker gets: the context and the driver's KUBEFORGE_* settings (in a RayJob they also arrive
    through the runtime env; passed explicitly so a local run behaves the same)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("KUBEFORGE_") and k != CONTEXT_ENV}
    return {"context": context.model_dump(mode="json"), "env": env, **extra}


def fit(train_loop: Callable[[dict], None], context: WorkloadContext, workers: Workers, max_failures: int,
        **config) -> None:
    """Run train_loop on `workers` Ray Train workers (gloo on CPU, NCCL on GPU: TorchTrainer's default), with up
    to max_failures in-job restarts of the worker group."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    init_ray(workers.count * workers.cpus_per_worker)
    gpus = {"GPU": workers.gpus_per_worker} if workers.gpus_per_worker else {}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=worker_config(context, **config),
        scaling_config=ScalingConfig(num_workers=workers.count, use_gpu=workers.gpus_per_worker > 0,
                                     resources_per_worker={"CPU": workers.cpus_per_worker, **gpus}),
        run_config=RunConfig(name=f"{context.name}-{context.attempt}",
                             failure_config=FailureConfig(max_failures=max_failures),
                             storage_path=str(Path(tempfile.gettempdir()) / "kubeforge-ray-train")),
    )
    trainer.fit()


def run_driver(prepare: Callable[[WorkloadContext, WorkloadStorage], Callable[[], None]]) -> None:
    """The entrypoint's main(): `prepare(context, storage)` validates the spec and does the pre-flight checks
    (user errors fail here, before any worker starts) and returns what runs the training (usually a call of
    fit()). The driver heartbeat covers both; every failure becomes a classified exit code."""
    context = WorkloadContext.from_env()
    storage = WorkloadStorage(context)

    def main() -> None:
        heartbeat = driver_heartbeat(storage)
        try:
            prepare(context, storage)()
        finally:
            heartbeat.stop()

    run_workload(main, storage.write_failure)


def run_train_driver(spec_model: type, preflight: Callable[[Any, WorkloadStorage], None], train_module: str) -> None:
    """main() of a Ray Train workload: the spec validated as `spec_model` (a UserError naming the kind),
    `preflight(spec, storage)`, then `<train_module>.train_loop` fitted on the spec's resources with the in-job
    worker restarts. The loop's module is imported only when training starts, after the checks passed."""

    def prepare(context: WorkloadContext, storage: WorkloadStorage) -> Callable[[], None]:
        try:
            spec = spec_model.model_validate(context.spec)
        except ValidationError as error:
            raise UserError(f"invalid {context.kind} spec: {error}") from None
        preflight(spec, storage)
        restarts = worker_restarts()
        resources = spec.resources

        def train() -> None:
            train_loop = importlib.import_module(train_module).train_loop
            fit(train_loop, context, Workers(resources.workers, resources.cpus_per_worker,
                                             resources.gpus_per_worker), max_failures=restarts)

        return train

    run_driver(prepare)


# worker side
def setup_worker(config: dict) -> tuple[WorkloadContext, int]:
    """First thing in every worker: the driver's settings, the context, this worker's rank."""
    import ray.train

    os.environ.update(config.get("env") or {})
    return WorkloadContext.model_validate(config["context"]), ray.train.get_context().get_world_rank()


@contextlib.contextmanager
def unrecoverable_failures_end_the_attempt(storage: WorkloadStorage) -> Iterator[None]:
    """Around a worker's training: a failure that a restart would only repeat is recorded for the attempt (its
    failure report), and a restarted worker group raises it again at once."""
    recorded = storage.read_failure()
    if recorded is not None and recorded.exit_code in UNRECOVERABLE:
        raise UNRECOVERABLE[recorded.exit_code](recorded.message)
    try:
        yield
    except BaseException as error:
        code, reason, message = classify_exception(error)
        if code in UNRECOVERABLE:
            with contextlib.suppress(Exception):  # recording must never hide the failure
                storage.write_failure(code, reason, message, "".join(traceback.format_exception(error))[-4000:])
        raise



@contextlib.contextmanager
def worker_attempt(config: dict) -> Iterator[tuple[WorkloadContext, int, WorkloadStorage, Optional[Heartbeat]]]:
    """What every worker's train_loop runs inside: the context and rank, MLflow pointed at the run's server
    (before anything reads models:/ URIs), the object store, and on rank 0 the heartbeat. The heartbeat runs
    where the training steps run: a stopped or stuck worker stops beating. Its first beat already says NodeCheck,
    so the driver's heartbeat (phase Starting) stops once it sees that. A failure no restart can fix ends the
    attempt; rank 0 records what failed."""
    context, rank = setup_worker(config)
    if context.mlflow.tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(context.mlflow.tracking_uri)
    storage = WorkloadStorage(context)
    heartbeat = None
    if rank == 0:
        heartbeat = Heartbeat(storage.write_progress, context.attempt)
        heartbeat.update(phase="NodeCheck", message=resumed_inside_attempt(storage))
        heartbeat.start()
    try:
        with unrecoverable_failures_end_the_attempt(storage):
            yield context, rank, storage, heartbeat
    except BaseException as error:
        if rank == 0:
            record_worker_failure(heartbeat, error)
        raise
    finally:
        if heartbeat:
            heartbeat.stop()

def resumed_inside_attempt(storage: WorkloadStorage) -> Optional[str]:
    """On rank 0 before its first beat: a message when this worker group replaces one that already trained in
    this attempt (Ray Train restarted it after a worker failure), else None."""
    progress = storage.read_progress()
    if progress is None or progress.attempt != storage.context.attempt or progress.phase == "Starting":
        return None
    return (f"worker group restarted inside attempt {storage.context.attempt} after a worker failure "
            f"(was at step {progress.step}, phase {progress.phase})")



def record_worker_failure(heartbeat: Optional[Heartbeat], error: BaseException) -> None:
    """On rank 0 when training fails: the last heartbeat says Failed with the message; the MLflow run ends FAILED
    (a later attempt, or a restarted worker group, reopens it)."""
    message = f"{type(error).__name__}: {error}"[:300]
    if heartbeat:
        heartbeat.update(phase="Failed", message=message)
        heartbeat.beat()
    try:
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.set_tag("kubeforge.lastError", message[:250])
            mlflow.end_run(status="FAILED")
    except Exception as tracking_error:  # never hide the original failure
        print(f"kubeforge: could not close the MLflow run: {tracking_error}")
