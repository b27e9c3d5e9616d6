"""The causal-LM kind: the run's specialist (base + adapter, or a fully fine-tuned model), the
untouched base and any other decoder, each prompted with the recipe's task.

Classification scores every label's tokens after the prompt (`scoring.LabelScorer`); QA and
extraction generate greedily. The specialist keeps the prompt format stored with its run; a
baseline gets its own prompt style's format, the label list where `task.list_labels` asks for
it, and, with `shots`, in-context examples drawn from train by the recipe's seed.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

from finetune.errors import FinetuneError
from finetune.hardware import free_memory, weight_dtype
from finetune.models import (
    ModelSource,
    check_fits,
    load_language_model,
    load_tokenizer,
    resolve,
    weights_bytes_needed,
)
from finetune.models.heads import CAUSAL_LM
from finetune.models.scoring import LabelScorer, generate_answers, label_token_ids
from finetune.recipe import Recipe
from finetune.runs import check_same_base
from finetune.systems.base import SPECIALIST, Context, Inference, Kind, Loaded, Plan, System
from finetune.systems.common import (
    disk_bytes,
    draw_shots,
    encoded_plan,
    label_predictions,
    merged_in_float32,
    parameter_sizes,
    read_answers,
    serving_form,
    shown_label_list,
)
from finetune.tasks.prompts import (
    PROMPT_FILE,
    PromptFormat,
    encode,
    prompt_format,
    untrained_format,
)
from finetune.tasks.types import LABELS, task_type

log = logging.getLogger(__name__)


class CausalLM(Kind):
    """The `Kind` of every decoder system, and the base of the kinds that prompt a model as it
    does (`seq2seq`, `engine`)."""

    name = "causal-lm"
    prompted = True
    head = CAUSAL_LM

    def system(self, baseline: Any) -> System:
        b = baseline
        return System(b.name, "baseline", b.model, b.shots, b.prompt_style)

    def instance_key(self, recipe: Recipe, system: System) -> str:
        """`specialist` for the run's weights, `base` for the base model, else the model."""
        if system.model == "run":
            return SPECIALIST
        if system.model in ("base", recipe.model.base):
            return "base"
        return system.model

    def inference(self, recipe: Recipe, fmt: PromptFormat, tokenizer: Any) -> Inference:
        """How prompts become predictions: label scores, or greedy answers."""
        return _inference(recipe, fmt, tokenizer)

    def load(self, recipe: Recipe, run_dir: Path, key: str) -> Loaded:
        if key == SPECIALIST:
            loaded = _load_run_model(recipe, run_dir, self)
        else:
            source = resolve(
                recipe.model.base if key == "base" else key, key="eval.baselines.model"
            )
            model = _load(recipe, source, head=self.head)
            loaded = Loaded(
                model,
                _tokenizer(source),
                source.ref,
                self,
                disk_bytes(source, None),
                identity=source,
            )
        loaded.model.eval()
        return loaded

    def shared_base(self, recipe: Recipe, run_dir: Path) -> Any:
        """A LoRA run shares its base, loaded the same way, with other runs of that base."""
        if not (run_dir / "adapter").is_dir():
            return None
        m = recipe.model
        what = [self.name, resolve(m.base).identity, m.dtype, m.quantization, m.trust_remote_code]
        return json.dumps(what, sort_keys=True, default=str)

    def load_sharing(self, runs: list[tuple[Recipe, Path]]) -> list[Loaded]:
        """One base in memory with each run's adapter on it by name, unmerged (a merge would
        fold one adapter into the shared weights); each instance activates its own."""
        from peft import PeftModel

        recipe, _ = runs[0]
        source = resolve(recipe.model.base)
        names = [f"run{i}" for i in range(len(runs))]
        model = PeftModel.from_pretrained(
            _load(recipe, source, head=self.head),
            str(runs[0][1] / "adapter"),
            adapter_name=names[0],
        )
        for name, (_, run_dir) in zip(names[1:], runs[1:], strict=True):
            check_same_base(run_dir, source.identity)
            model.load_adapter(str(run_dir / "adapter"), adapter_name=name)
        model.eval()
        tokenizer = _tokenizer(source)
        return [
            self._shared(model, tokenizer, source, run_dir, name, len(runs))
            for name, (_, run_dir) in zip(names, runs, strict=True)
        ]

    def _shared(self, model, tokenizer, source, run_dir: Path, name: str, count: int) -> Loaded:
        loaded = Loaded(
            model,
            tokenizer,
            f"{source.ref} + LoRA adapter (one of {count} on a shared base)",
            self,
            disk_bytes(source, run_dir / "adapter"),
            serving="adapter unmerged, on a base shared with other runs",
            identity=source,
            activate=functools.partial(model.set_adapter, name),
        )
        _check_chat_template(run_dir, PromptFormat.load(run_dir), loaded)
        return loaded

    def plan(
        self, recipe: Recipe, system: System, key: str, loaded: Loaded, context: Context
    ) -> Plan:
        run_format = _run_format(recipe, key, loaded, context.run_dir)
        if key == SPECIALIST:
            _check_chat_template(context.run_dir, run_format, loaded)
        fmt = system_format(system, loaded, run_format, recipe, self.prompted)
        shots = draw_shots(recipe, context.train_rows, system.shots)
        infer = self.inference(recipe, fmt, loaded.tokenizer)
        encoded = _encode_items(recipe, fmt, loaded.tokenizer, context.items, shots, infer.reserve)
        return encoded_plan(system, key, fmt.style, infer, encoded)

    def sizes(self, model: Any) -> tuple[int, int, int]:
        return parameter_sizes(model)

    def instance_bytes(self, recipe: Recipe, key: str) -> int | None:
        ref = recipe.model.base if key in (SPECIALIST, "base") else key
        own = ref == recipe.model.base
        try:
            return weights_bytes_needed(
                resolve(ref, key="eval.baselines.model"),
                dtype=weight_dtype(recipe.model.dtype),
                quantization=recipe.model.quantization if own else "none",
                trust_remote_code=recipe.model.trust_remote_code and own,
                head=self.head,
            )
        except Exception as exc:  # an estimate only: a model it cannot size loads per use
            log.warning("cannot estimate the size of %s (%s); it loads per use", ref, exc)
            return None


def _check_chat_template(run_dir: Path, fmt: PromptFormat, loaded: Loaded) -> None:
    if fmt.style != "chat" or (run_dir / "model").is_dir():
        return
    if loaded.tokenizer.chat_template != fmt.chat_template:
        raise FinetuneError(
            f"{run_dir}: the base model's chat template is not the one stored with the run "
            "(prompt.json); the specialist would see prompts it was not trained on"
        )


def _attach_adapter(
    recipe: Recipe, source: ModelSource, adapter: Path, head: str
) -> tuple[Any, str]:
    """The base with the run's adapter, and a description of the form it is served in.

    The merge is done on float32 weights and rounded once to the serving dtype. Merging into
    weights already loaded in bf16 rounds W + BA back onto bf16's grid around W, which erases
    most of a small update (mean label log-probability error 0.17 against the float32 model on
    the sentiment recipe, 3x bf16's own 0.05); rounding float32 W + BA once keeps it.
    """
    import torch
    from peft import PeftModel

    dtype = weight_dtype(recipe.model.dtype)
    form = serving_form(recipe)
    auto = recipe.eval.specialist_form == "auto"
    if form == "merged" and auto and not _fits_float32(source, head):
        log.warning(
            "%s: its float32 weights, needed for the merge, do not fit in memory; the adapter "
            "stays unmerged (eval.specialist_form)",
            source.ref,
        )
        form = "adapter"
    if form == "adapter":
        tuned = PeftModel.from_pretrained(_load(recipe, source, head=head), str(adapter))
        return tuned, "adapter unmerged, in float32"
    base = _load(recipe, source, dtype=torch.float32, head=head)
    return merged_in_float32(base, adapter, dtype)


def _fits_float32(source: ModelSource, head: str) -> bool:
    import torch

    return weights_bytes_needed(source, dtype=torch.float32, head=head) <= free_memory()[0]


def _run_format(recipe: Recipe, key: str, loaded: Loaded, run_dir: Path) -> PromptFormat:
    """The run's stored prompt format; where no run is behind the system (a teacher labelling
    before any training), the one training would store, from the tokenizer and the task."""
    if key != SPECIALIST and not (run_dir / PROMPT_FILE).is_file():
        return prompt_format(loaded.tokenizer, recipe.task)
    return PromptFormat.load(run_dir)


def system_format(
    system: System,
    loaded: Loaded,
    run_format: PromptFormat,
    recipe: Recipe,
    prompted: bool = True,
) -> PromptFormat:
    """The specialist keeps the run's stored format; a baseline gets its own style's format (the
    base model shares the run's, unless the run is a sequence classifier that reads no prompt),
    with the label list when `common.shown_label_list` (a prompted kind's)."""
    if system.model == "run":
        return run_format
    if (
        system.model in ("base", recipe.model.base)
        and system.prompt_style in ("auto", run_format.style)
        and run_format.style != "text"
    ):
        fmt = run_format
    else:
        fmt = prompt_format(loaded.tokenizer, recipe.task, system.prompt_style)
    return untrained_format(fmt, recipe.task) if shown_label_list(recipe, system, prompted) else fmt


def _load_run_model(recipe: Recipe, run_dir: Path, kind: CausalLM) -> Loaded:

    source = resolve(recipe.model.base)
    if (run_dir / "model").is_dir():  # full fine-tuning: the run holds the whole model
        full = ModelSource(str(run_dir / "model"), "local", str(run_dir / "model"), {})
        model = _load(recipe, full, head=kind.head)
        description = f"{source.ref} fine-tuned (full)"
        return Loaded(
            model, _tokenizer(full), description, kind, disk_bytes(full, None), identity=source
        )
    check_same_base(run_dir, source.identity)
    model, serving = _attach_adapter(recipe, source, run_dir / "adapter", kind.head)
    merged = " (merged)" if serving.startswith("merged") else ""
    return Loaded(
        model,
        _tokenizer(source),
        f"{source.ref} + LoRA adapter{merged}",
        kind,
        disk_bytes(source, run_dir / "adapter"),
        serving=serving,
        identity=source,
    )


def _load(recipe: Recipe, source: ModelSource, *, head: str, dtype: Any = None) -> Any:
    # The recipe's loading options (quantization, remote code, pickles) are for its own base
    # model; other baselines load plainly.
    own = source.ref == recipe.model.base
    quantization = recipe.model.quantization if own else "none"
    trust = recipe.model.trust_remote_code and own
    dtype = dtype or weight_dtype(recipe.model.dtype)
    kwargs: dict[str, Any] = {}
    if quantization != "none":
        from finetune.train.model import bnb_config

        kwargs["quantization_config"] = bnb_config(recipe)
    if recipe.model.check_memory:
        check_fits(
            source, dtype=dtype, quantization=quantization, trust_remote_code=trust, head=head
        )
    return load_language_model(
        source,
        head=head,
        dtype=dtype,
        trust_remote_code=trust,
        allow_pickle=recipe.model.allow_pickle and own,
        **kwargs,
    )


def _tokenizer(source: ModelSource) -> Any:
    tokenizer = load_tokenizer(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _inference(recipe: Recipe, fmt: PromptFormat, tokenizer: Any) -> Inference:
    task = recipe.task
    if task_type(task).request == LABELS:
        label_ids = label_token_ids(fmt, tokenizer, task.labels)

        def classify(model, prompts, batch_size, share_prefix, on_batch=None):
            scorer = LabelScorer(
                model,
                label_ids,
                tokenizer.pad_token_id,
                batch_size=batch_size,
                length_normalize=recipe.eval.length_normalize,
                share_prefix=share_prefix,
            )
            scores = scorer.score(prompts, on_batch)
            predictions, details, best = label_predictions(task.labels, scores)
            return predictions, details, [len(label_ids[b]) for b in best]

        return Inference(max(len(ids) for ids in label_ids), classify)

    def answer(model, prompts, batch_size, share_prefix, on_batch=None):
        outputs = generate_answers(
            model,
            tokenizer,
            fmt,
            prompts,
            max_new_tokens=recipe.eval.max_new_tokens,
            batch_size=batch_size,
            on_batch=on_batch,
        )
        predictions, details = read_answers(recipe, [text for text, _ in outputs])
        return predictions, details, [count for _, count in outputs]

    return Inference(recipe.eval.max_new_tokens, answer)


def _encode_items(recipe, fmt, tokenizer, items, shots, reserve):
    """Prompts for every item: the item's part fits `model.max_length`; the shots come on top."""
    unbounded = 10**9
    with_shots = encode(fmt, tokenizer, "", None, max_length=unbounded, shots=shots)
    without = encode(fmt, tokenizer, "", None, max_length=unbounded)
    limit = recipe.model.max_length + with_shots.prompt_length - without.prompt_length
    return [
        encode(
            fmt,
            tokenizer,
            item["text"],
            None,
            max_length=limit,
            truncation=recipe.model.truncation,
            shots=shots,
            reserve=reserve,
        )
        for item in items
    ]
