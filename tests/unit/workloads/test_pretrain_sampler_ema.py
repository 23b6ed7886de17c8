"""The pretraining sampler is a function of (seed, epoch, global step) only, so a resumed run (also with another
worker count) sees exactly the samples the uninterrupted one sees; the EMA costs nothing before its start and
blends afterwards."""

from __future__ import annotations

import pytest

from kubeforge_workloads.pretrain.ema import ScheduledEMA, ema_start_step
from kubeforge_workloads.pretrain.sampler import GlobalSampler

torch = pytest.importorskip("torch")


def seen(sampler: GlobalSampler, steps: range, world_size: int, micro: int) -> list[int]:
    """Every sample id trained on over `steps`, in the order ranks x micro-steps visit them."""
    ids = []
    for step in steps:
        for rank in range(world_size):
            for micro_batch in sampler.micro_batches(step, rank, world_size, micro):
                ids.extend(micro_batch)
    return ids


def test_each_epoch_is_a_permutation_that_depends_only_on_seed_and_epoch():
    sampler = GlobalSampler(num_samples=40, global_batch=8, seed=7)
    epoch_0 = [i for step in range(5) for i in sampler.batch(step)]
    epoch_1 = [i for step in range(5, 10) for i in sampler.batch(step)]
    assert sorted(epoch_0) == sorted(epoch_1) == list(range(40))
    assert epoch_0 != epoch_1
    assert GlobalSampler(40, 8, 7).batch(6) == sampler.batch(6)
    assert GlobalSampler(40, 8, 8).batch(6) != sampler.batch(6)


@pytest.mark.parametrize("before,after", [((2, 2), (1, 4)), ((2, 1), (1, 2)), ((1, 4), (4, 1)), ((2, 2), (2, 2))])
def test_a_resume_with_another_worker_count_sees_no_sample_twice_and_skips_none(before, after):
    """(workers, micro batch) before and after the resume; the global batch stays 8."""
    sampler = GlobalSampler(num_samples=50, global_batch=8, seed=3)  # 6 steps per epoch, 2 samples dropped
    resume_at, end = 4, 9  # mid-epoch, through the epoch boundary
    interrupted = seen(sampler, range(0, resume_at), *before) + seen(sampler, range(resume_at, end), *after)
    uninterrupted = seen(sampler, range(0, end), *before)
    assert sorted(interrupted) == sorted(uninterrupted)
    for step in range(end):  # per step, the same global batch whoever trains it
        assert sorted(seen(sampler, range(step, step + 1), *after)) == sorted(sampler.batch(step))
    first_epoch = interrupted[:6 * 8]
    assert len(set(first_epoch)) == len(first_epoch) == 48  # within an epoch, no sample twice


def test_the_batch_must_divide_across_workers_and_micro_batches():
    with pytest.raises(ValueError, match=r"global batch 8 is not divisible by workers \(3\) x micro batch \(1\)"):
        GlobalSampler(20, 8, 0).micro_batches(0, 0, 3, 1)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GlobalSampler(4, 8, 0)


def test_ema_starts_at_its_step_and_blends_after():
    assert ema_start_step(1000, 0.965) == 965 and ema_start_step(10, 0.0) == 1
    weight = torch.nn.Parameter(torch.tensor([0.0]))
    ema = ScheduledEMA(decay=0.5, start_step=3)
    for step, value in ((1, 1.0), (2, 2.0)):
        weight.data.fill_(value)
        ema.update([("w", weight)], step)
        assert not ema.active and ema.state_dict() == {}  # no copy, no cost before the start
    weight.data.fill_(4.0)
    ema.update([("w", weight)], 3)
    assert ema.state_dict()["w"].item() == 4.0  # the first update copies
    weight.data.fill_(8.0)
    ema.update([("w", weight)], 4)
    assert ema.state_dict()["w"].item() == 6.0  # 0.5 x 4 + 0.5 x 8
    assert ema.prepare_to_restore([("w", weight)], step=2) == {} and not ema.active
    assert set(ema.prepare_to_restore([("w", weight)], step=3)) == {"w"} and ema.active
    with pytest.raises(ValueError, match="between 0 and 1"):
        ScheduledEMA(decay=1.0, start_step=1)


def test_ema_saved_by_ddp_workers_restores_on_one_unwrapped_worker():
    """Two workers train wrapped in DDP (parameters named module.*), one worker trains the bare model: the average
    a checkpoint holds must load either way."""
    weight = torch.nn.Parameter(torch.tensor([2.0]))
    under_ddp = ScheduledEMA(decay=0.5, start_step=1)
    under_ddp.update([("module.layer.w", weight)], 1)
    alone = ScheduledEMA(decay=0.5, start_step=1)
    assert set(alone.prepare_to_restore([("layer.w", weight)], step=1)) == set(under_ddp.state_dict()) == {"layer.w"}
    alone.update([("layer.w", weight)], 2)  # and keeps blending under the unwrapped name
    assert alone.state_dict()["layer.w"].item() == 2.0
