"""Evaluation loss outside any Trainer: token-weighted mean cross-entropy over the labelled tokens (label != -100),
rows sharded across ranks.

Trainer.evaluate() before train() under DDP changes the later training trajectory in a way no checkpoint
captures (measured: per-step losses of a resumed 2-worker run then differ from the uninterrupted one), so
workloads evaluate with this plain no-grad loop instead, before and after training.
"""

from __future__ import annotations


def evaluate_loss(model, rows: list[dict], collator, batch_size: int) -> float:
    """Mean loss per labelled token over all rows (dicts the collator batches); every rank must call it (one
    all_reduce under DDP)."""
    import torch
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64)
    shard = rows[rank::world]
    with torch.no_grad():
        for start in range(0, len(shard), batch_size):
            batch = {k: v.to(device) for k, v in collator(shard[start:start + batch_size]).items()}
            tokens = int((batch["labels"][:, 1:] != -100).sum())
            if tokens == 0:
                continue
            loss = model(**batch).loss
            totals[0] += float(loss) * tokens
            totals[1] += tokens
    if was_training:
        model.train()
    if distributed:
        totals = totals.to(device) if dist.get_backend() == "nccl" else totals
        dist.all_reduce(totals)
        totals = totals.cpu()
    if totals[1] == 0:
        return float("nan")
    return float(totals[0] / totals[1])
