"""Recipe schema and loader: shipped recipes validate; bad recipes give exact, located messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from bad_recipes import BAD_RECIPES, with_changes
from conftest import MINIMAL_RECIPE, REPO

from finetune.recipe import Recipe, RecipeError, load_recipe, recipe_to_dict

SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))


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
