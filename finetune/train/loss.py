"""The training loss computed only where it is supervised.

TRL's SFTTrainer projects every position through the LM head (on CPUs its fused head
scores all positions; only Triton devices skip the masked ones). With completion-only
loss a classification example supervises two or three of its ~80 tokens, and SmolLM2's
49k-word head is about a fifth of its FLOPs, so most of that work is thrown away.
`SupervisedSFTTrainer` asks the model for logits at the supervised positions only
(transformers' `logits_to_keep`) and computes the same token-summed cross-entropy with
the same normalization as TRL, so losses and gradients are unchanged (a test compares
them with TRL's own `compute_loss`). Validation loss takes the same path, which also keeps
a (batch x length x 49k) logits tensor out of memory.

Validation also computes the prompt prefix that every validation example shares (the chat
template's system turn and the instruction: 48 of the sentiment recipe's 82 tokens on
average) once per pass and reuses its key/value cache for every batch, as the evaluator's
scorer does. Batches keep their composition and order, so the loss is the one the full
computation gives (a test checks them equal).
"""

from __future__ import annotations

import inspect
from typing import Any

from trl import SFTTrainer

from finetune.errors import FinetuneError
from finetune.models.scoring import expanded_cache, shared_prefix_length
from finetune.train.dataset import SOFT_LABELS, WEIGHT
from finetune.train.sampler import SeededSampling, SeededTrainer

IGNORE = -100
TOKEN_WEIGHTS = "token_weights"  # the batch's weight of every token (`WeightedCollator`)


def weighted_nll(logits: Any, targets: Any, weights: Any, num_items: Any) -> Any:
    """TRL's loss, the token-summed cross-entropy over `num_items` supervised tokens (those of
    the batch if None), with each token weighted by its row's weight and the sum scaled by
    (tokens / weighted tokens): a row per label weighted by the teacher's probabilities, which
    sum to 1, then weighs as much as one hard label. Unweighted (None), it is TRL's loss."""
    import torch
    import torch.nn.functional as F

    per_token = F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none"
    )
    supervised = (targets.flatten() != IGNORE).float()
    summed = per_token.sum()
    if weights is not None:
        w = weights.flatten().float() * supervised
        summed = (per_token * w).sum() * supervised.sum() / w.sum().clamp(min=1e-12)
    count = supervised.sum() if num_items is None else num_items
    return summed / torch.as_tensor(count, device=summed.device).clamp(min=1)


class WeightedCollator:
    """A collator whose batches also carry each token's weight (its row's `weight`), laid out
    as the labels are: per padded row, or one flat row when batches are padding-free."""

    def __init__(self, inner: Any, padding_free: bool) -> None:
        self.inner, self.padding_free = inner, padding_free

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        weights = [float(e.get(WEIGHT, 1.0)) for e in examples]
        batch = self.inner([{k: v for k, v in e.items() if k != WEIGHT} for e in examples])
        if not any(WEIGHT in e for e in examples):
            return batch
        out = torch.zeros(batch["labels"].shape, dtype=torch.float32)
        start = 0
        for i, (e, w) in enumerate(zip(examples, weights, strict=True)):
            n = len(e["input_ids"])
            if self.padding_free:
                out[0, start : start + n], start = w, start + n
            else:
                out[i, :n] = w
        batch[TOKEN_WEIGHTS] = out
        return batch


def supervised_positions(labels: Any) -> Any:
    """Sequence positions whose next token is supervised in any row of the batch.

    Rows share the positions (`logits_to_keep` indexes the sequence axis), so a padded
    batch keeps the union; a padding-free batch is one row and keeps exactly its own.
    """
    import torch

    positions = (labels[:, 1:] != IGNORE).any(dim=0).nonzero().flatten()
    # An all-masked batch still needs a graph to backpropagate a zero loss through.
    return (
        positions if positions.numel() else torch.zeros(1, dtype=torch.long, device=labels.device)
    )


# Below this many shared tokens a prefix cache costs more than it saves (as in scoring).
MIN_SHARED_PREFIX = 8


class SupervisedSFTTrainer(SeededSampling, SFTTrainer):
    """SFTTrainer whose loss projects only the supervised positions through the LM head."""

    def evaluate(self, eval_dataset=None, *args, **kwargs):
        """One validation pass, the shared prompt prefix computed once for all its batches."""
        data = self.eval_dataset if eval_dataset is None else eval_dataset
        self._eval_prefix = self._shared_validation_prefix(data)
        self._eval_cache = None  # the weights changed since the last pass
        import torch

        # Under train.compile, validation's prefix and cached-suffix calls would each compile a
        # graph of their own (three recompiles, most of a cold run's compile time), for a few
        # forward-only passes: they run the layers eagerly instead.
        try:
            with torch.compiler.set_stance("force_eager"):
                return super().evaluate(eval_dataset, *args, **kwargs)
        finally:
            self._eval_prefix, self._eval_cache = [], None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weights = inputs.pop(TOKEN_WEIGHTS, None)
        if not self._plain_nll(model):
            if weights is not None:
                raise FinetuneError(
                    "data.teacher.targets: soft targets weigh each label's tokens in the loss "
                    "computed here, which this model or these settings do not take (TRL's own "
                    "loss does); set targets: hard"
                )
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        labels = inputs["labels"]
        positions = supervised_positions(labels)
        shared = self._usable_prefix(model, inputs, positions)
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        if shared:
            forward = self._suffix_inputs(model, inputs, shared)
        # Through `model(...)` (not its backbone) so DDP's gradient hooks see the forward pass.
        outputs = model(**forward, use_cache=False, logits_to_keep=positions - shared)
        targets = labels[:, positions + 1]
        if weights is not None:
            weights = weights[:, positions + 1]
        loss = weighted_nll(outputs.logits, targets, weights, num_items_in_batch)
        # As TRL does: `num_items_in_batch` counts every rank's tokens and DDP averages gradients.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        # Validation asks for the outputs too; only the loss is used (prediction_loss_only).
        return (loss, outputs) if return_outputs else loss

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if WEIGHT not in self._signature_columns:  # soft targets' rows carry their weight
            self._signature_columns = [*self._signature_columns, WEIGHT]

    def _shared_validation_prefix(self, data: Any) -> list[int]:
        """The tokens every validation example starts with, short of the first supervised one."""

        if data is None or isinstance(data, dict) or "input_ids" not in data.column_names:
            return []
        # TRL turns the completion mask into labels (-100 where unsupervised).
        if "labels" in data.column_names:
            supervised = [[label != IGNORE for label in row] for row in data["labels"]]
        elif "completion_mask" in data.column_names:
            supervised = [[bool(m) for m in row] for row in data["completion_mask"]]
        else:
            return []
        ids = data["input_ids"]
        # The logit that predicts the first supervised token sits one position before it.
        first = min((row.index(True) for row in supervised if True in row), default=0)
        length = min(shared_prefix_length(ids), first - 1)
        return list(ids[0][:length]) if length >= MIN_SHARED_PREFIX else []

    def _usable_prefix(self, model: Any, inputs: dict[str, Any], positions: Any) -> int:
        """How many leading tokens come from the shared prefix cache (0: the full computation)."""
        import torch

        shared = len(getattr(self, "_eval_prefix", []))
        if model.training or not shared or set(inputs) - {"input_ids", "attention_mask", "labels"}:
            return 0
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        prefix = torch.tensor(self._eval_prefix, device=ids.device)
        same = ids.shape[1] > shared and bool((ids[:, :shared] == prefix).all())
        full = mask is None or bool(mask[:, :shared].all())
        return shared if same and full and int(positions.min()) >= shared else 0

    def _suffix_inputs(self, model: Any, inputs: dict[str, Any], shared: int) -> dict[str, Any]:
        """The batch past the shared prefix, with the prefix's key/value cache for every row."""
        import torch

        ids = inputs["input_ids"]
        if self._eval_cache is None:
            out = model(input_ids=ids[:1, :shared], use_cache=True, logits_to_keep=1)
            self._eval_cache = [(layer[0], layer[1]) for layer in out.cache]
        size, width = ids.shape[0], ids.shape[1] - shared
        mask = inputs.get("attention_mask")
        return {
            "input_ids": ids[:, shared:],
            "attention_mask": mask if mask is not None else torch.ones_like(ids),
            "position_ids": (shared + torch.arange(width, device=ids.device)).expand(size, width),
            "cache": expanded_cache(self._eval_cache, size),
        }

    def _plain_nll(self, model: Any) -> bool:
        """True when the loss is TRL's default token-summed NLL, the case computed here."""
        if getattr(self, "_supervised_ok", None) is None:
            from finetune.train.model import without_peft

            causal_lm = without_peft(self.accelerator.unwrap_model(model))
            self._supervised_ok = (
                "logits_to_keep" in inspect.signature(causal_lm.forward).parameters
                and self.args.loss_type == "nll"
                and self.compute_loss_func is None
                and self.label_smoother is None
                and not self.aux_loss_enabled
                and self.get_tp_size() == 1
                and not _sequence_parallel(self.accelerator)
            )
        return self._supervised_ok


def _sequence_parallel(accelerator: Any) -> bool:
    """Sequence or context parallelism splits positions across ranks: leave those to TRL."""
    config = getattr(accelerator, "parallelism_config", None)
    return config is not None and (config.sp_enabled or config.cp_enabled)


def soft_cross_entropy(logits: Any, targets: Any) -> Any:
    """The cross-entropy of a classifier's logits against target distributions over its
    labels (a teacher's soft targets), averaged over the batch: mean of -sum(q log softmax)."""
    import torch.nn.functional as F

    return -(targets.float() * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


class SoftLabelTrainer(SeededTrainer):
    """A classifier's Trainer whose training loss is the cross-entropy against each row's
    target distribution (`soft_labels`); validation rows, human-labelled, keep the hard loss."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        soft = inputs.pop(SOFT_LABELS, None)
        if soft is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        loss = soft_cross_entropy(outputs.logits, soft)
        return (loss, outputs) if return_outputs else loss

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if SOFT_LABELS not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, SOFT_LABELS]
