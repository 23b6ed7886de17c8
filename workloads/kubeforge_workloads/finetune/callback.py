"""The TrainerCallback that connects the Trainer to Kubeforge: heartbeat fields, MLflow metrics, and checkpoints
committed to the object store (every rank's files first, the manifest last, by rank 0)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional

from kubeforge_workloads.common.heartbeat import Heartbeat
from kubeforge_workloads.common.storage import WorkloadStorage

STEP_DELAY_ENV = "KUBEFORGE_STEP_DELAY_SECONDS"  # slows steps down for chaos tests and demos


def make_callback(storage: WorkloadStorage, heartbeat: Optional[Heartbeat], rank: int, tokens_per_step: float,
                  on_metrics, before_commit: Optional[Callable[[], None]] = None):
    from transformers import TrainerCallback

    class KubeforgeCallback(TrainerCallback):
        def __init__(self):
            self.last_time = time.monotonic()
            self.last_tokens = 0
            self.delay = float(os.environ.get(STEP_DELAY_ENV) or 0)

        def on_train_begin(self, args, state, control, **kwargs):
            self.last_time, self.last_tokens = time.monotonic(), state.num_input_tokens_seen or 0

        def on_step_end(self, args, state, control, **kwargs):
            # Tokens/s over the last step, all workers together: the Trainer counts non-padding input tokens
            # (include_num_input_tokens_seen); the estimate from the average row length is the fallback.
            now = time.monotonic()
            seen = state.num_input_tokens_seen or 0
            tokens = seen - self.last_tokens if seen > self.last_tokens else tokens_per_step
            throughput = tokens / max(now - self.last_time, 1e-6)
            self.last_time, self.last_tokens = now, seen
            if heartbeat:
                heartbeat.update(phase="Training", step=state.global_step, total_steps=state.max_steps,
                                 epoch=round(state.epoch or 0, 4), throughput=round(throughput, 1))
            if self.delay:
                time.sleep(self.delay)
                self.last_time = time.monotonic()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and rank == 0:
                if heartbeat and "loss" in logs:
                    heartbeat.update(loss=float(logs["loss"]))
                if heartbeat and "eval_loss" in logs:
                    heartbeat.update(eval_loss=float(logs["eval_loss"]))
                on_metrics(logs, state.global_step)

        def on_save(self, args, state, control, **kwargs):
            # Every rank saved its own rng_state_<rank>.pth locally; ranks > 0 upload theirs, then rank 0
            # uploads the rest and writes the manifest last. Barriers order the three stages.
            import torch.distributed as dist

            distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
            step = state.global_step
            local = Path(args.output_dir) / f"checkpoint-{step}"
            if heartbeat:
                heartbeat.update(phase="Checkpointing")
            if rank == 0:
                storage.clear_checkpoint(step)
            if distributed:
                dist.barrier()
                if rank > 0:
                    storage.upload_checkpoint_files(step, local, names=[f"rng_state_{rank}.pth"])
                dist.barrier()
            if rank == 0:
                if before_commit:
                    before_commit()
                others = tuple(f"rng_state_{r}.pth" for r in range(1, dist.get_world_size())) if distributed else ()
                uri = storage.commit_checkpoint(step, state.epoch or 0.0, local, uploaded_by_others=others)
                if heartbeat:
                    heartbeat.update(phase="Training", last_checkpoint=uri)

    return KubeforgeCallback()
