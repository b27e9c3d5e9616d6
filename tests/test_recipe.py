"""Recipe schema and loader: shipped recipes validate; bad recipes give exact, located messages."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from conftest import MINIMAL_RECIPE, REPO

from finetune.recipe import Recipe, RecipeError, load_recipe, recipe_to_dict

SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))


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


def test_at_least_one_recipe_per_task_is_shipped():
    tasks = {load_recipe(p).task.type for p in SHIPPED}
    assert tasks >= {"classification", "qa"}
    assert len(SHIPPED) >= 3


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe.name == path.stem, (
        "a recipe's name should match its file name so runs are easy to find"
    )


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
        "base not a string",
        with_changes(("base", 3)),
        ["base: expected the path of another recipe file; found 3"],
    ),
]


@pytest.mark.parametrize("case_id, content, expected", BAD_RECIPES, ids=[c[0] for c in BAD_RECIPES])
def test_bad_recipe_gives_exact_message(write_recipe, case_id, content, expected):
    path = write_recipe(content)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert [str(p) for p in info.value.problems] == [f"{path}: {line}" for line in expected]


def test_every_problem_is_reported_at_once(write_recipe):
    path = write_recipe(
        with_changes(
            ("lora", {"rnak": 8, "alpha": -1}),
            ("train", {"batch_size": "big"}),
            ("tracking", {"wandb": {"mode": "loud"}}),
        )
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    keys = [p.key for p in info.value.problems]
    assert sorted(keys) == ["lora.alpha", "lora.rnak", "tracking.wandb.mode", "train.batch_size"]
    assert str(info.value).startswith("4 recipe problems:\n")


def test_invalid_yaml_names_the_line(write_recipe):
    path = write_recipe("name: x\ntask: [unclosed\n")
    with pytest.raises(RecipeError, match=r"invalid YAML at line 3, column 1"):
        load_recipe(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the file is empty"),
        ("- a\n- b\n", "a recipe must be a mapping of keys to values; found list"),
    ],
)
def test_non_mapping_files(write_recipe, text, message):
    path = write_recipe(text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_yaml_is_loaded_safely(write_recipe):
    path = write_recipe("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(RecipeError, match="invalid YAML"):
        load_recipe(path)


def test_missing_file():
    with pytest.raises(RecipeError, match=r"recipe file 'nope\.yaml' does not exist"):
        load_recipe("nope.yaml")


# --- extension with base: ---------------------------------------------------------------


def test_base_is_deep_merged(write_recipe):
    write_recipe(
        with_changes(
            ("lora", {"r": 4, "alpha": 8}), ("eval", {"metrics": ["accuracy", "macro_f1"]})
        ),
        "parent.yaml",
    )
    child = write_recipe(
        {
            "base": "parent.yaml",
            "name": "child",
            "lora": {"r": 32},
            "eval": {"metrics": ["accuracy"]},
        },
        "child.yaml",
    )
    recipe = load_recipe(child)
    assert recipe.name == "child"
    assert (recipe.lora.r, recipe.lora.alpha) == (32, 8), (
        "child key wins, sibling key from the parent is kept"
    )
    assert recipe.eval.metrics == ["accuracy"], "lists are replaced, not concatenated"
    assert recipe.task.labels == ["fresh", "rotten"]


def test_base_chain_of_three(write_recipe):
    write_recipe(with_changes(("seed", 1)), "a.yaml")
    write_recipe({"base": "a.yaml", "seed": 2, "lora": {"r": 2}}, "b.yaml")
    c = write_recipe({"base": "b.yaml", "name": "c"}, "c.yaml")
    recipe = load_recipe(c)
    assert (recipe.seed, recipe.lora.r, recipe.name) == (2, 2, "c")


def test_error_in_base_names_the_base_file(write_recipe):
    parent = write_recipe(with_changes(("lora", {"rnak": 8})), "parent.yaml")
    child = write_recipe({"base": "parent.yaml", "name": "child"}, "child.yaml")
    with pytest.raises(RecipeError) as info:
        load_recipe(child)
    assert [str(p) for p in info.value.problems] == [
        f"{parent}: lora.rnak: unknown key 'rnak' (did you mean lora.r?)"
    ]


def test_missing_base(write_recipe):
    child = write_recipe({"base": "gone.yaml", "name": "child"}, "child.yaml")
    with pytest.raises(RecipeError) as info:
        load_recipe(child)
    assert [str(p) for p in info.value.problems] == [
        f"{child}: base: recipe file '{child.parent / 'gone.yaml'}' does not exist"
    ]


def test_base_cycle_is_detected(write_recipe):
    a = write_recipe({"base": "b.yaml", "name": "a"}, "a.yaml")
    b = write_recipe({"base": "a.yaml", "name": "b"}, "b.yaml")
    with pytest.raises(RecipeError) as info:
        load_recipe(a)
    assert [str(p) for p in info.value.problems] == [
        f"{b}: base: recipes extend each other in a cycle: a.yaml -> b.yaml -> a.yaml"
    ]


def test_self_cycle(write_recipe):
    a = write_recipe({"base": "a.yaml", "name": "a"}, "a.yaml")
    with pytest.raises(RecipeError, match=r"cycle: a.yaml -> a.yaml"):
        load_recipe(a)


# --- command-line overrides ------------------------------------------------------------------


def test_overrides_are_typed_like_the_file(write_recipe):
    path = write_recipe(MINIMAL_RECIPE)
    recipe = load_recipe(
        path,
        [
            "lora.r=8",
            "train.epochs=2",
            "eval.metrics=[accuracy]",
            "model.trust_remote_code=true",
            "tracking.wandb.mode=disabled",
        ],
    )
    assert (recipe.lora.r, recipe.train.epochs, recipe.eval.metrics) == (8, 2.0, ["accuracy"])
    assert recipe.model.trust_remote_code is True and recipe.tracking.wandb.mode == "disabled"


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "lora.r=abc",
            "command line (lora.r=abc): lora.r: input should be a valid integer, unable to parse string as an integer; found 'abc'",
        ),
        (
            "lora.rnak=8",
            "command line (lora.rnak=8): lora.rnak: unknown key 'rnak' (did you mean lora.r?)",
        ),
        (
            "train.learning_rate=0",
            "command line (train.learning_rate=0): train.learning_rate: input should be greater than 0; found 0",
        ),
        (
            "lora.r",
            "command line: lora.r: override 'lora.r' is not of the form key.path=value, e.g. lora.r=16",
        ),
        (
            "lora..r=2",
            "command line: lora..r: override 'lora..r=2' is not of the form key.path=value, e.g. lora.r=16",
        ),
    ],
)
def test_bad_overrides(write_recipe, override, expected):
    path = write_recipe(MINIMAL_RECIPE)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, [override])
    assert [str(p) for p in info.value.problems] == [expected]


def test_resolved_recipe_round_trips(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe(MINIMAL_RECIPE))
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(yaml.safe_dump(recipe_to_dict(recipe)))
    assert load_recipe(dumped) == recipe
    assert recipe_to_dict(recipe)["lora"]["r"] == 16, "defaults are filled in from the schema"


def test_recipe_is_frozen(write_recipe):
    recipe = load_recipe(write_recipe(MINIMAL_RECIPE))
    with pytest.raises(Exception, match="frozen"):
        recipe.lora.r = 2  # type: ignore[misc]


def test_every_schema_field_has_help_text():
    from pydantic import BaseModel

    from finetune.recipe.schema import section_type

    def walk(model: type[BaseModel], prefix: str):
        for name, field in model.model_fields.items():
            assert field.description, f"{prefix}{name} has no help text"
            sub = section_type(field.annotation)
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                yield from walk(sub, f"{prefix}{name}.")
            yield f"{prefix}{name}"

    assert len(list(walk(Recipe, ""))) > 50


def test_recipe_name_in_shipped_files_is_unique():
    names = [load_recipe(p).name for p in SHIPPED]
    assert len(names) == len(set(names))
    assert all(Path(p).suffix == ".yaml" for p in SHIPPED)
