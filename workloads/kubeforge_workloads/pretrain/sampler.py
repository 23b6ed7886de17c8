"""The deterministic, resumable sampler: which samples each rank trains on at each step, from (seed, epoch,
global step) alone.

The global sample order of an epoch is a permutation that depends only on (seed, epoch). Global step s reads the
s-th run of `global_batch` ids of that order (a partial batch at the end of an epoch is dropped, so every step
has the same size); each rank takes its own slice of that batch for each gradient-accumulation micro-step. A run
resumed at step s, with any worker count that divides the batch, therefore sees exactly the samples the
uninterrupted run would have seen from step s on: none twice, none skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@lru_cache(maxsize=4)
def epoch_order(num_samples: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The global sample order of one epoch: a permutation of range(num_samples) seeded by (seed, epoch)."""
    import numpy as np

    return tuple(int(i) for i in np.random.default_rng([seed, epoch]).permutation(num_samples))


@dataclass(frozen=True)
class GlobalSampler:
    num_samples: int
    global_batch: int
    seed: int

    def __post_init__(self):
        if self.global_batch < 1:
            raise ValueError(f"global batch must be at least 1, got {self.global_batch}")
        if self.num_samples < self.global_batch:
            raise ValueError(f"the dataset has {self.num_samples} samples, fewer than one global batch "
                             f"({self.global_batch})")

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def batch(self, step: int) -> list[int]:
        """The sample ids of global step `step` (0-based), all ranks together."""
        epoch, within = divmod(step, self.steps_per_epoch)
        start = within * self.global_batch
        return list(epoch_order(self.num_samples, self.seed, epoch)[start:start + self.global_batch])

    def micro_batches(self, step: int, rank: int, world_size: int, micro_batch: int) -> list[list[int]]:
        """Rank `rank`'s micro-batches of global step `step`: accumulation = global_batch / (world_size x
        micro_batch) of them; micro-step a of rank r is the (a x world_size + r)-th run of micro_batch ids."""
        per_micro_step = world_size * micro_batch
        if self.global_batch % per_micro_step:
            raise ValueError(f"global batch {self.global_batch} is not divisible by workers ({world_size}) x "
                             f"micro batch ({micro_batch})")
        ids = self.batch(step)
        return [ids[(a * world_size + rank) * micro_batch:(a * world_size + rank + 1) * micro_batch]
                for a in range(self.global_batch // per_micro_step)]
