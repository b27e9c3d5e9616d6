"""Length-grouped batches whose order depends only on the seed and the epoch.

transformers' `LengthGroupedSampler` shuffles with the global random state, so a run
resumed from a checkpoint would see its examples in another order than the run it
continues (and DDP ranks could disagree). This sampler draws each epoch's order from
its own generator seeded with (seed, epoch); the Trainer calls `set_epoch` before every
epoch, resumed or not. `SeededSampling` puts it into a Trainer (every head's).
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer
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


class SeededSampling:
    """Trainer mixin: `train_sampling_strategy: group_by_length` batches with the sampler above."""

    def _get_train_sampler(self, train_dataset=None):
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return SeededLengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=[len(ids) for ids in dataset["input_ids"]],
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )


class SeededTrainer(SeededSampling, Trainer):
    """transformers' Trainer with length-grouped batches in an order fixed by the seed: the
    trainer of every head that TRL's SFTTrainer does not train."""
