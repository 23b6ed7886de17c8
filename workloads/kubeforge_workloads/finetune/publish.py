"""After training: save the adapter (and merged or full model), log to MLflow, register, write result.json."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from kubeforge.api.finetune import FineTuneSpec, Method
from kubeforge.api.workload import WorkloadContext
from kubeforge_workloads.common.models import registry_uri
from kubeforge_workloads.common.storage import WorkloadStorage

CHAOS_PUBLISH_DELAY_ENV = "KUBEFORGE_CHAOS_PUBLISH_DELAY_SECONDS"
"""Seconds to sleep after the adapter is registered and before the merged model is: widens the window in which
a kill interrupts publishing, for tests."""
PROBE_PROMPT = "### Question\nWhat does Kubeforge do?\n### Answer\n"
"""A fixed prompt whose logits go to outputs/probe.json, so a loaded adapter can be checked against them."""


def training_params(spec: FineTuneSpec, train_rows: int, eval_rows: int) -> dict:
    t = spec.training
    return {"base_model": spec.base_model.uri, "method": spec.method.value, "lora_r": spec.lora.r,
            "lora_alpha": spec.lora.alpha, "lora_dropout": spec.lora.dropout,
            "target_modules": ",".join(spec.lora.target_modules), "epochs": t.epochs, "max_steps": t.max_steps,
            "batch_size": t.batch_size, "gradient_accumulation_steps": t.gradient_accumulation_steps,
            "learning_rate": t.learning_rate, "lr_scheduler": t.lr_scheduler.value, "warmup_ratio": t.warmup_ratio,
            "max_seq_length": t.max_seq_length, "seed": t.seed, "precision": t.precision.value,
            "workers": spec.resources.workers, "train_rows": train_rows, "eval_rows": eval_rows}


def probe_logits(model, tokenizer) -> dict:
    import torch

    ids = tokenizer(PROBE_PROMPT, return_tensors="pt")["input_ids"]
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids.to(model.device)).logits[0].float().cpu()
    return {"prompt": PROBE_PROMPT, "inputIds": ids[0].tolist(), "logits": logits.tolist()}


def publish(context: WorkloadContext, spec: FineTuneSpec, storage: WorkloadStorage, trainer, tokenizer, cache: Path,
            run_id: Optional[str], eval_before: Optional[dict], eval_after: Optional[float]) -> dict:
    """Publish the trained model once per resource generation, however many attempts get here: a retry reuses
    what an earlier attempt of the same uid and generation already published (all of it when its result.json
    is there; else the registered versions, found by their tags) and repeats only idempotent writes (same S3
    keys, same artifact paths)."""
    from mlflow.tracking import MlflowClient

    from kubeforge_workloads.common.tracking import log_metric_once, publication_tags, register

    published = storage.get_json("result.json")
    if published and (published.get("resourceUid"), published.get("generation")) == (context.uid, context.generation):
        print(f"kubeforge: reusing what an earlier attempt of generation {context.generation} published", flush=True)
        return published

    client = MlflowClient()
    identity = publication_tags(context)
    registered_by = {"kubeforge.attempt": str(context.attempt)}
    model = trainer.model
    name = spec.output.registered_model_name
    result: dict = {"registeredModelName": name, "mlflowRunId": run_id, "steps": trainer.state.global_step,
                    "evalLossBefore": (eval_before or {}).get("evalLoss"), "evalLossAfter": eval_after,
                    "resourceUid": context.uid, "generation": context.generation}
    if eval_after is not None:
        log_metric_once(run_id, "eval_loss_after", eval_after, trainer.state.global_step)
    main_dir = cache / ("model" if spec.method == Method.FULL else "adapter") / "out"
    model.save_pretrained(main_dir)
    tokenizer.save_pretrained(main_dir)
    artifact = "model" if spec.method == Method.FULL else "adapter"
    # modelUri is the registry URI (what serving and status use); the S3 copies are adapterUri / fullModelUri.
    result["adapterUri" if artifact == "adapter" else "fullModelUri"] = storage.upload_dir(main_dir, artifact)
    client.log_artifacts(run_id, str(main_dir), artifact_path=artifact)  # a retry overwrites the same files
    version = register(name, run_id, artifact, identity, f"{context.namespace}/{context.name} ({spec.method.value})",
                       extra_tags=registered_by)
    result["registeredModelVersion"] = version
    result["modelUri"] = registry_uri(name, version)
    probe = probe_logits(model, tokenizer)
    storage.put_json(probe, "probe.json")
    delay = float(os.environ.get(CHAOS_PUBLISH_DELAY_ENV) or 0)
    if delay:  # the adapter is registered, the merged model is not: a kill now interrupts publishing
        time.sleep(delay)

    if spec.output.merge and spec.method != Method.FULL:
        merged = model.merge_and_unload()
        merged_dir = cache / "merged" / "out"
        merged.save_pretrained(merged_dir)
        tokenizer.save_pretrained(merged_dir)
        result["mergedUri"] = storage.upload_dir(merged_dir, "merged")
        client.log_artifacts(run_id, str(merged_dir), artifact_path="merged")
        result["mergedModelName"] = f"{name}-merged"
        result["mergedModelVersion"] = register(f"{name}-merged", run_id, "merged", identity,
                                                f"{context.namespace}/{context.name} merged for serving",
                                                extra_tags=registered_by)
    client.log_dict(run_id, result, "result.json")
    return result

