"""TrainingJob: operator-only checks and status.output for the batch reconcile (the workload resumes itself)."""

from __future__ import annotations

from kubeforge.api.finetune import Precision
from kubeforge.api.kinds import kind_info
from kubeforge.api.trainingjob import TrainingJobSpec
from kubeforge.controllers.batch import KindBase

OUTPUT_KEYS = ("modelUri", "emaModelUri", "registeredModelName", "registeredModelVersion", "registeredModelUri",
               "registeredEmaModelName", "registeredEmaModelVersion", "registeredEmaModelUri", "steps", "finalLoss",
               "mlflowRunId", "tokenizedShards", "skipped", "latents")
"""What status.output shows of the workload's result: a causal LM's precomputed token shards (uri, and whether this
run reused them); diffusion's skipped image-caption pairs (by cause, with shard and row) and each phase's latent
cache."""


class TrainingJobKind(KindBase):
    info = kind_info("TrainingJob")

    def validate(self, spec: TrainingJobSpec, obj: dict) -> list[str]:
        problems = []
        if spec.training.precision == Precision.FP16 and spec.resources.gpus_per_worker < 1:
            problems.append("spec.training.precision: fp16 needs GPUs; set spec.resources.gpusPerWorker >= 1, "
                            "or use bf16 or fp32 on CPU")
        return problems

    def output(self, result: dict) -> dict:
        return {key: result[key] for key in OUTPUT_KEYS if result.get(key) is not None}

    def summary(self, spec: TrainingJobSpec, result: dict, finished_at: str) -> dict:
        # The workload's final account includes the last resume, which a heartbeat may not have shown.
        return {"goodput": result["goodput"]} if result.get("goodput") else {}
