"""The TrainerCallback that connects the Trainer to Kubeforge: heartbeat fields, MLflow metrics, and checkpoints
committed to the object store through the Checkpointer (every rank's files first, the manifest last, by rank 0,
in the background)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional

from kubeforge_workloads.common import chaos
from kubeforge_workloads.common.checkpoint import Checkpointer, local_files
from kubeforge_workloads.common.heartbeat import Heartbeat

STEP_DELAY_ENV = "KUBEFORGE_STEP_DELAY_SECONDS"  # slows steps down for chaos tests and demos


def make_callback(checkpointer: Checkpointer, heartbeat: Optional[Heartbeat], rank: int, tokens_per_step: float,
                  on_metrics, before_commit: Optional[Callable[[], None]] = None):
    from transformers import TrainerCallback

    class KubeforgeCallback(TrainerCallback):
        def __init__(self):
            self.last_time = time.monotonic()
            self.last_tokens = 0
            self.delay = float(os.environ.get(STEP_DELAY_ENV) or 0)

        def committed(self, uri: str) -> None:
            if heartbeat:
                heartbeat.update(last_checkpoint=uri)

        def on_train_begin(self, args, state, control, **kwargs):
            self.last_time, self.last_tokens = time.monotonic(), state.num_input_tokens_seen or 0

        def on_step_end(self, args, state, control, **kwargs):
            chaos.stall_point()
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
            # uploads the rest and writes the manifest last, in the background. Barriers order the stages.
            # The local directory stays intact meanwhile: the Trainer writes each checkpoint to a new one and
            # rotation (save_total_limit=2) only removes the one before it.
            import torch.distributed as dist

            distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
            step = state.global_step
            local = Path(args.output_dir) / f"checkpoint-{step}"
            if heartbeat:
                heartbeat.update(phase="Checkpointing")
            if rank == 0:
                checkpointer.wait()  # one commit at a time; the previous one's upload error is raised here
                checkpointer.clear(step)
            if distributed:
                dist.barrier()
                if rank > 0:
                    checkpointer.contribute(step, local, [f"rng_state_{rank}.pth"])
                dist.barrier()
            if rank == 0:
                if before_commit:
                    before_commit()
                files_by_rank = {0: local_files(local)}
                if distributed:
                    files_by_rank.update({r: [f"rng_state_{r}.pth"] for r in range(1, dist.get_world_size())})
                checkpointer.save_in_background(step, files_by_rank, local, state.epoch or 0.0,
                                                on_committed=self.committed)
            if heartbeat:
                heartbeat.update(phase="Training")

        def on_train_end(self, args, state, control, **kwargs):
            checkpointer.close()  # the last checkpoint is durable before the run reports Done

    return KubeforgeCallback()
