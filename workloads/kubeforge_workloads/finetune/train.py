"""The per-worker training loop: transformers Trainer + peft, checkpoints committed to S3, resumable."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from kubeforge.api.finetune import FineTuneSpec, Precision
from kubeforge_workloads.common.checkpoint import Checkpointer
from kubeforge_workloads.common.nodecheck import node_check
from kubeforge_workloads.common.raytrain import worker_attempt
from kubeforge_workloads.finetune.callback import make_callback
from kubeforge_workloads.finetune.data import ListDataset, PadCollator, load_examples, tokenize
from kubeforge_workloads.finetune.model import build_model, load_base_model_dir


def training_arguments(spec: FineTuneSpec, output_dir: Path, use_gpu: bool, has_eval: bool):
    from transformers import TrainingArguments

    t = spec.training
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler.value,
        # transformers 5: a float below 1 is a ratio of the total steps
        warmup_steps=min(t.warmup_ratio, 0.999999),
        num_train_epochs=t.epochs, max_steps=t.max_steps or -1, seed=t.seed, data_seed=t.seed,
        bf16=t.precision == Precision.BF16, fp16=t.precision == Precision.FP16,
        save_strategy="steps", save_steps=t.checkpoint_every_steps, save_total_limit=2,
        eval_strategy="steps" if (has_eval and t.eval_every_steps) else "no", eval_steps=t.eval_every_steps,
        logging_strategy="steps", logging_steps=1, report_to=[], use_cpu=not use_gpu,
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
    )


def train_loop(config: dict) -> None:
    """Runs in every Ray Train worker; again in a new worker group when Ray Train restarts one in the attempt."""
    with worker_attempt(config) as (context, rank, storage, heartbeat):
        spec = FineTuneSpec.model_validate(context.spec)
        _train(context, spec, storage, rank, spec.resources.gpus_per_worker > 0, heartbeat)


def _train(context, spec, storage, rank, use_gpu, heartbeat) -> None:
    import mlflow
    from transformers import AutoTokenizer, Trainer, set_seed

    from kubeforge_workloads.common.evaluation import evaluate_loss
    from kubeforge_workloads.finetune.publish import publish, training_params

    if heartbeat:
        heartbeat.update(phase="NodeCheck")
    node_check(expect_gpu=use_gpu)
    cache = Path(tempfile.mkdtemp(prefix=f"kubeforge-{context.name}-{context.attempt}-{rank}-"))
    if heartbeat:
        heartbeat.update(phase="Loading")
    model_dir = load_base_model_dir(spec.base_model.uri, cache, storage.store)
    train_examples, eval_examples = load_examples(spec, cache, storage.store)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_rows = tokenize(train_examples, tokenizer, spec.training.max_seq_length)
    eval_rows = tokenize(eval_examples, tokenizer, spec.training.max_seq_length)
    # Seed before the adapter is created: LoRA's initial weights come from the torch RNG, so every attempt
    # and every identical resource starts from the same point.
    set_seed(spec.training.seed)
    model = build_model(spec, model_dir)

    run_id, metrics = None, None
    if rank == 0:
        from kubeforge_workloads.common.tracking import MetricsBuffer, start_run

        remembered = (storage.get_json("mlflow_run.json") or {}).get("runId")
        run_id = start_run(context, training_params(spec, len(train_rows), len(eval_rows)), remembered)
        storage.put_json({"runId": run_id}, "mlflow_run.json")
        metrics = MetricsBuffer(run_id)

    def on_metrics(logs: dict, step: int) -> None:
        numeric = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and k != "epoch"}
        if numeric:
            metrics.add(numeric, step)

    average_tokens = sum(len(r["input_ids"]) for r in train_rows) / len(train_rows)
    tokens_per_step = (average_tokens * spec.training.batch_size * spec.training.gradient_accumulation_steps
                       * spec.resources.workers)
    output_dir = cache / "checkpoints"
    collator = PadCollator(tokenizer.pad_token_id)
    checkpointer = Checkpointer(storage, rank=rank)
    trainer = Trainer(model=model, args=training_arguments(spec, output_dir, use_gpu, bool(eval_rows)),
                      train_dataset=ListDataset(train_rows), eval_dataset=ListDataset(eval_rows) if eval_rows else None,
                      data_collator=collator,
                      callbacks=[make_callback(checkpointer, heartbeat, rank, tokens_per_step, on_metrics,
                                               before_commit=metrics.flush if metrics else None)])

    resume_dir = None
    latest = checkpointer.latest()
    if latest is not None:
        resume_dir = output_dir / f"checkpoint-{latest}"
        resumed_from = checkpointer.load(latest, resume_dir)
        print(f"kubeforge: resuming from {resumed_from}", flush=True)
        if heartbeat:
            heartbeat.update(resumed_from=resumed_from, last_checkpoint=resumed_from, step=latest)
    # Evaluation is collective under DDP: every rank calls it, rank 0 records the result. Not Trainer.evaluate():
    # see common/evaluation.py for why (it breaks bit-exact resume under DDP).
    eval_before = storage.get_json("eval_before.json") if rank == 0 else None
    if eval_rows and latest is None:
        if heartbeat:
            heartbeat.update(phase="Evaluating")
        loss = evaluate_loss(model, eval_rows, collator, spec.training.batch_size)
        if rank == 0:
            eval_before = {"evalLoss": loss}
            storage.put_json(eval_before, "eval_before.json")
            mlflow.log_metric("eval_loss_before", loss, step=0)
    if heartbeat:
        heartbeat.update(phase="Training", eval_loss=(eval_before or {}).get("evalLoss"))
    try:
        trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)
    except BaseException:
        if metrics:  # the losses up to the failure help whoever reads the run; the failure matters more
            with contextlib.suppress(Exception):
                metrics.flush()
        raise
    eval_after = None
    if eval_rows:
        if heartbeat:
            heartbeat.update(phase="Evaluating")
        eval_after = evaluate_loss(trainer.model, eval_rows, collator, spec.training.batch_size)
    if rank == 0:
        if heartbeat:
            heartbeat.update(phase="Registering", eval_loss=eval_after)
        metrics.flush()
        result = publish(context, spec, storage, trainer, tokenizer, cache, run_id, eval_before, eval_after)
        if heartbeat:
            result["resumedFrom"] = heartbeat.fields.get("resumed_from")
        storage.put_json(result, "result.json")
        mlflow.end_run()
        if heartbeat:
            heartbeat.update(phase="Done", step=trainer.state.global_step)
            heartbeat.beat()
