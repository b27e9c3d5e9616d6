"""Broken recipes with the exact problem lines they must give: the hand-written half of the bad-recipe
corpus. `test_recipe` checks the messages through `load_recipe`; `test_failures` runs every case
through the `finetune train` command (exit 2, no traceback, nothing started)."""

from __future__ import annotations

import copy

from conftest import MINIMAL_RECIPE


def with_changes(*changes: tuple[str, object]) -> dict:
    """MINIMAL_RECIPE with dotted keys set (value None deletes the key)."""
    recipe = copy.deepcopy(MINIMAL_RECIPE)
    for dotted, value in changes:
        *head, leaf = dotted.split(".")
        target = recipe
        for part in head:
            target = target.setdefault(part, {})
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return recipe


BAD_RECIPES = [
    # (id, recipe, expected problem lines after "<file>: ")
    (
        "unknown top-level key",
        with_changes(("trian", {"epochs": 1})),
        ["trian: unknown key 'trian' (did you mean train?)"],
    ),
    (
        "unknown task key",
        with_changes(("task.lables", ["a"])),
        ["task.lables: unknown key 'lables' (did you mean task.labels?)"],
    ),
    (
        "unknown data key",
        with_changes(("data.feilds", {})),
        ["data.feilds: unknown key 'feilds' (did you mean data.fields?)"],
    ),
    (
        "unknown split key",
        with_changes(("data.split", {"train": 0.8, "validation": 0.1, "tset": 0.1})),
        ["data.split.tset: unknown key 'tset' (did you mean data.split.test?)"],
    ),
    (
        "unknown model key",
        with_changes(("model.quantisation", "8bit")),
        ["model.quantisation: unknown key 'quantisation' (did you mean model.quantization?)"],
    ),
    (
        "unknown qlora key",
        with_changes(("model.qlora", {"quant": "nf4"})),
        ["model.qlora.quant: unknown key 'quant' (did you mean model.qlora.quant_type?)"],
    ),
    (
        "unknown lora key",
        with_changes(("lora", {"rnak": 8})),
        ["lora.rnak: unknown key 'rnak' (did you mean lora.r?)"],
    ),
    (
        "lora synonym",
        with_changes(("lora", {"rank": 8})),
        ["lora.rank: unknown key 'rank' (did you mean lora.r?)"],
    ),
    (
        "unknown train key",
        with_changes(("train", {"lr": 0.1})),
        ["train.lr: unknown key 'lr' (did you mean train.learning_rate?)"],
    ),
    (
        "unknown baseline key",
        with_changes(("eval", {"baselines": [{"name": "b", "shot": 2}]})),
        ["eval.baselines.0.shot: unknown key 'shot' (did you mean eval.baselines.0.shots?)"],
    ),
    (
        "unknown wandb key",
        with_changes(("tracking", {"wandb": {"mod": "offline"}})),
        ["tracking.wandb.mod: unknown key 'mod' (did you mean tracking.wandb.mode?)"],
    ),
    (
        "key in the wrong section",
        with_changes(("train", {"use_dora": True})),
        ["train.use_dora: unknown key 'use_dora' (did you mean lora.use_dora?)"],
    ),
    (
        "unknown key far from any",
        with_changes(("lora", {"zzzzzz": 1})),
        [
            "lora.zzzzzz: unknown key 'zzzzzz'; valid keys here: r, alpha, dropout, target_modules, use_rslora, use_dora"
        ],
    ),
    (
        "wrong type",
        with_changes(("lora", {"r": "eight"})),
        [
            "lora.r: input should be a valid integer, unable to parse string as an integer; found 'eight'"
        ],
    ),
    (
        "wrong type section",
        with_changes(("train", 5)),
        ["train: input should be a valid dictionary or instance of TrainConfig; found 5"],
    ),
    (
        "zero size",
        with_changes(("train", {"batch_size": 0})),
        ["train.batch_size: input should be greater than 0; found 0"],
    ),
    (
        "negative rank",
        with_changes(("lora", {"r": -4})),
        ["lora.r: input should be greater than 0; found -4"],
    ),
    (
        "learning rate too high",
        with_changes(("train", {"learning_rate": 3})),
        ["train.learning_rate: input should be less than or equal to 1; found 3"],
    ),
    (
        "dropout out of range",
        with_changes(("lora", {"dropout": 1.5})),
        ["lora.dropout: input should be less than or equal to 1; found 1.5"],
    ),
    (
        "bad choice",
        with_changes(("task.type", "regression")),
        ["task.type: input should be 'classification', 'extraction' or 'qa'; found 'regression'"],
    ),
    (
        "bad quantization",
        with_changes(("model.quantization", "2bit")),
        ["model.quantization: input should be 'none', '8bit' or '4bit'; found '2bit'"],
    ),
    (
        "missing section",
        with_changes(("model", None)),
        ["model: required key is missing: The base model and how it is loaded."],
    ),
    (
        "missing field",
        with_changes(("model.base", None), ("model.dtype", "auto")),
        [
            "model.base: required key is missing: The base model: a built-in registry name (see `finetune models`), a local directory, or a Hugging Face Hub id."
        ],
    ),
    (
        "bad name",
        with_changes(("name", "my recipe!")),
        ["name: string should match pattern '^[A-Za-z0-9][A-Za-z0-9._-]*$'; found 'my recipe!'"],
    ),
    (
        "classification without labels",
        with_changes(("task.labels", None)),
        ["task.labels: a classification task needs at least two labels; found []"],
    ),
    (
        "duplicate labels",
        with_changes(("task.labels", ["a", "a"])),
        ["task.labels: labels must be distinct; found ['a', 'a']"],
    ),
    (
        "split does not add up",
        with_changes(("data.split", {"train": 0.5, "validation": 0.1, "test": 0.1})),
        ["data.split: train + validation + test must add up to 1; found 0.7"],
    ),
    (
        "full fine-tuning of quantized",
        with_changes(("train", {"method": "full"}), ("model.quantization", "8bit")),
        [
            "model.quantization: full fine-tuning cannot update quantized weights; found quantization '8bit' with train.method 'full'. Use train.method: lora, or quantization: none"
        ],
    ),
    (
        "duplicate baseline names",
        with_changes(("eval", {"baselines": [{"name": "b"}, {"name": "b", "shots": 2}]})),
        ["eval.baselines: baseline names must be distinct; found ['b', 'b']"],
    ),
    (
        "too few timing rounds for the confidence",
        with_changes(("eval", {"timing": {"rounds": 5}, "confidence": 0.95})),
        [
            "eval.timing.rounds: 5 rounds cannot give a 0.95 interval for the timing ratios; use at least 6 (or lower eval.confidence)"
        ],
    ),
    (
        "merged adapter on quantized weights",
        with_changes(("eval", {"specialist_form": "merged"}), ("model.quantization", "8bit")),
        [
            "eval.specialist_form: quantized weights (8bit) cannot take a merged adapter; use specialist_form: adapter or auto"
        ],
    ),
    (
        "base not a string",
        with_changes(("base", 3)),
        ["base: expected the path of another recipe file; found 3"],
    ),
]
