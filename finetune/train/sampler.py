"""Length-grouped batches whose order depends only on the seed and the epoch.

transformers' `LengthGroupedSampler` shuffles with the global random state, so a run
resumed from a checkpoint would see its examples in another order than the run it
continues (and DDP ranks could disagree). This sampler draws each epoch's order from
its own generator seeded with (seed, epoch); the Trainer calls `set_epoch` before every
epoch, resumed or not.
"""

from __future__ import annotations

from typing import Any

from transformers.trainer_pt_utils import LengthGroupedSampler


class SeededLengthGroupedSampler(LengthGroupedSampler):
    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        import torch

        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Any:
        # Seeded afresh on every iteration: one order per epoch, however often it is iterated
        # (skipping batches on resume iterates again).
        self.generator.manual_seed(self.seed * 100_003 + self.epoch)
        return super().__iter__()
