"""Trainer callbacks the training tests hand to `train(..., callbacks=[...])`: a snapshot of the
parameters and first batch, and a failure injected at a chosen step. Kept out of conftest.py, which
every test module loads: importing `TrainerCallback` imports the whole training stack."""

from __future__ import annotations

from transformers import TrainerCallback


class Snapshot(TrainerCallback):
    """Parameters at the start and end of training, and the first training batch."""

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.batch = next(iter(train_dataloader))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}


class FailAt(TrainerCallback):
    """Raises RuntimeError("injected failure") at the end of optimizer step `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("injected failure")
