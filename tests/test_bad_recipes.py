"""The bad-recipe corpus through the real command line: every broken recipe makes `finetune train`
exit 2 with one message naming the file and the dotted key, no traceback, and nothing started
(no prepared data, no run directory). Hand-written cases plus hypothesis-generated ones for
types, ranges and unknown keys at every level of the schema."""

from __future__ import annotations

import copy
from pathlib import Path

import annotated_types
import pytest
import yaml
from bad_recipes import BAD_RECIPES, with_changes
from conftest import MINIMAL_RECIPE, recipe_problems, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from finetune.recipe import Recipe
from finetune.recipe.schema import section_type

F = "recipe.yaml"  # the file each single-file case is written to

# (id, {file name: recipe mapping or raw YAML text}, command-line overrides, expected problem-line
# starts; `{dir}` is the directory the files are in, for problems found through `base:`)
EXTRA_CASES = [
    ("unknown tracking key", {F: with_changes(("tracking", {"run_dir": "r"}))}, [], [f"{F}: tracking.run_dir: unknown key 'run_dir' (did you mean tracking.runs_dir?)"]),
    ("unknown price key", {F: with_changes(("eval", {"prices": {"hourly_price": 1}}))}, [], [f"{F}: eval.prices.hourly_price: unknown key"]),
    ("API key in a recipe", {F: with_changes(("tracking", {"wandb": {"api_key": "k"}}))}, [], [f"{F}: tracking.wandb.api_key: unknown key"]),
    ("unknown key in an override", {F: MINIMAL_RECIPE}, ["lora.rnak=3"], ["command line (lora.rnak=3): lora.rnak: unknown key 'rnak' (did you mean lora.r?)"]),
    ("labels as one string", {F: with_changes(("task.labels", "fresh,rotten"))}, [], [f"{F}: task.labels: input should be a valid list"]),
    ("epochs as a list", {F: with_changes(("train", {"epochs": [1]}))}, [], [f"{F}: train.epochs: "]),
    ("zero epochs", {F: with_changes(("train", {"epochs": 0}))}, [], [f"{F}: train.epochs: input should be greater than 0"]),
    ("zero max_length", {F: with_changes(("model.max_length", 0))}, [], [f"{F}: model.max_length: input should be greater than 0"]),
    ("zero eval batch", {F: with_changes(("eval", {"batch_size": 0}))}, [], [f"{F}: eval.batch_size: input should be greater than 0"]),
    ("negative learning rate", {F: with_changes(("train", {"learning_rate": -0.001}))}, [], [f"{F}: train.learning_rate: input should be greater than 0"]),
    ("learning rate as words", {F: with_changes(("train", {"learning_rate": "fast"}))}, [], [f"{F}: train.learning_rate: input should be a valid number"]),
    ("learning rate in an override", {F: MINIMAL_RECIPE}, ["train.learning_rate=5"], ["command line (train.learning_rate=5): train.learning_rate: input should be less than or equal to 1"]),
    ("confidence out of range", {F: with_changes(("eval", {"confidence": 1.5}))}, [], [f"{F}: eval.confidence: input should be less than 1"]),
    ("negative shots", {F: with_changes(("eval", {"baselines": [{"name": "b", "shots": -1}]}))}, [], [f"{F}: eval.baselines.0.shots: input should be greater than or equal to 0"]),
    ("negative price", {F: with_changes(("eval", {"prices": {"machine_per_hour": -1}}))}, [], [f"{F}: eval.prices.machine_per_hour: input should be greater than or equal to 0"]),
    ("negative seed", {F: with_changes(("seed", -1))}, [], [f"{F}: seed: input should be greater than or equal to 0"]),
    ("negative split", {F: with_changes(("data.split", {"train": 1.5, "validation": -0.5, "test": 0.0}))}, [], [f"{F}: data.split.validation: "]),
    ("one label", {F: with_changes(("task.labels", ["fresh"]))}, [], [f"{F}: task.labels: a classification task needs at least two labels; found ['fresh']"]),
    ("template without input", {F: with_changes(("task.template", "Review: {instruction}"))}, [], [f"{F}: task.template: must contain {{input}}"]),
    ("save_every not a multiple", {F: with_changes(("train", {"eval_every": 3, "save_every": 4}))}, [], [f"{F}: train.save_every: must be a multiple of train.eval_every"]),
    ("bad wandb mode", {F: with_changes(("tracking", {"wandb": {"mode": "loud"}}))}, [], [f"{F}: tracking.wandb.mode: input should be 'online', 'offline' or 'disabled'"]),
    ("model path that does not exist", {F: with_changes(("model.base", "./models/missing"))}, [], [f"{F}: model.base: './models/missing' is not a registry model, an existing directory, or a Hub id (owner/name)."]),
    ("absolute model path that does not exist", {F: with_changes(("model.base", "/nonexistent/model"))}, [], [f"{F}: model.base: '/nonexistent/model' is not a registry model"]),
    ("model directory without config.json", {F: with_changes(("model.base", "."))}, [], [f"{F}: model.base: directory '.' has no config.json; it is not a transformers model directory"]),
    ("baseline that is not a model", {F: with_changes(("eval", {"baselines": [{"name": "b", "model": "accuracy"}]}))}, [], [f"{F}: eval.baselines.0.model: 'accuracy' is not a registry model, an existing directory, or a Hub id (owner/name)."]),
    ("baseline path that does not exist", {F: with_changes(("eval", {"baselines": [{"name": "b"}, {"name": "c", "model": "../big-model"}]}))}, [], [f"{F}: eval.baselines.1.model: '../big-model' is not a registry model"]),
    ("metric that does not exist", {F: with_changes(("eval", {"metrics": ["bleu"]}))}, [], [f"{F}: eval.metrics: "]),
    ("metric of another task", {F: with_changes(("eval", {"metrics": ["rouge_l"]}))}, [], [f"{F}: eval.metrics: "]),
    ("base cycle of three", {F: {**MINIMAL_RECIPE, "base": "b.yaml"}, "b.yaml": {"base": "c.yaml"}, "c.yaml": {"base": F}}, [], ["{dir}/c.yaml: base: recipes extend each other in a cycle: recipe.yaml -> b.yaml -> c.yaml -> recipe.yaml"]),
    ("missing base file", {F: {**MINIMAL_RECIPE, "base": "gone.yaml"}}, [], ["{dir}/recipe.yaml: base: recipe file 'gone.yaml' does not exist"]),
    ("invalid YAML", {F: "name: x\ntask: [unclosed\n"}, [], [f"{F}: (top level): invalid YAML at line 3, column 1"]),
    ("empty file", {F: ""}, [], [f"{F}: (top level): the file is empty"]),
    ("a list, not a mapping", {F: "- a\n- b\n"}, [], [f"{F}: (top level): a recipe must be a mapping of keys to values; found list"]),
    ("YAML that would run code", {F: "name: !!python/object/apply:os.system ['touch pwned']\n"}, [], [f"{F}: (top level): invalid YAML"]),
    ("several problems at once", {F: with_changes(("lora", {"r": 0}), ("train", {"batch_size": -2}))}, [], [f"{F}: lora.r: input should be greater than 0", f"{F}: train.batch_size: input should be greater than 0"]),
]  # fmt: skip


def _four_bit_case():
    import torch

    marks = [pytest.mark.skipif(torch.cuda.is_available(), reason="4-bit trains on a CUDA GPU")]
    case = ("4-bit training on a CPU", {F: with_changes(("model.quantization", "4bit"))}, [], [f"{F}: model.quantization: 4-bit (QLoRA) training needs a CUDA GPU"])  # fmt: skip
    return pytest.param(*case, id=case[0], marks=marks)


def _shared_cases():
    """test_recipe's exact-message cases, whole lines prefixed with the file."""
    return [
        pytest.param(case_id, {F: content}, [], [f"{F}: {line}" for line in expected], id=case_id)
        for case_id, content, expected in BAD_RECIPES
    ]


CORPUS = [
    *_shared_cases(),
    *(pytest.param(*case, id=case[0]) for case in EXTRA_CASES),
    _four_bit_case(),
]


def test_the_hand_written_corpus_has_at_least_40_cases():
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("case_id, files, overrides, expected", CORPUS)
def test_bad_recipe_exits_2_naming_file_and_key_and_starts_nothing(
    tmp_path, monkeypatch, capsys, case_id, files, overrides, expected
):
    monkeypatch.chdir(tmp_path)
    for name, content in files.items():
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        Path(name).write_text(text)
    code, output = run_cli(monkeypatch, capsys, "train", F, *overrides)
    assert code == 2, output
    assert "Traceback" not in output
    assert output.startswith("error: ")
    for prefix in expected:
        prefix = prefix.replace("{dir}", str(Path.cwd().resolve()))
        assert f"\n  {prefix}" in output, f"{prefix!r} not in:\n{output}"
    started = [p for p in ("runs", "data") if Path(p).exists()]
    assert started == [], f"{case_id} started work: {started}"


# --- property-based: out-of-range values, wrong types and unknown keys anywhere ---------------


RANGE_TYPES = (annotated_types.Gt, annotated_types.Ge, annotated_types.Lt, annotated_types.Le)


def _bounded_fields(model: type[BaseModel] = Recipe, prefix: str = "") -> list[tuple[str, list]]:
    """Every numeric field with bounds, as (dotted key, its annotated_types bounds)."""
    found = []
    for name, field in model.model_fields.items():
        sub = section_type(field.annotation)
        if sub is not None and sub is not model:
            if field.annotation is sub:  # a section, not a list of them
                found += _bounded_fields(sub, f"{prefix}{name}.")
            continue
        bounds = [m for m in field.metadata if isinstance(m, annotated_types.BaseMetadata)]
        if any(isinstance(b, RANGE_TYPES) for b in bounds):
            found.append((f"{prefix}{name}", bounds))
    return found


BOUNDED = _bounded_fields()


def _sections(model: type[BaseModel] = Recipe, prefix: str = "") -> list[str]:
    """The dotted path of every section (mapping) of the schema, the top level included."""
    paths = [prefix.rstrip(".")]
    for name, field in model.model_fields.items():
        sub = section_type(field.annotation)
        if sub is not None and field.annotation is sub:
            paths += _sections(sub, f"{prefix}{name}.")
    return paths


SECTIONS = _sections()


@st.composite
def out_of_range(draw) -> tuple[str, float]:
    key, bounds = draw(st.sampled_from(BOUNDED))
    bound = draw(st.sampled_from([b for b in bounds if isinstance(b, RANGE_TYPES)]))
    if isinstance(bound, annotated_types.Gt):
        value = draw(
            st.floats(max_value=bound.gt, allow_nan=False, allow_infinity=False, min_value=-1e9)
        )
    elif isinstance(bound, annotated_types.Ge):
        value = draw(
            st.floats(max_value=bound.ge, exclude_max=True, min_value=-1e9, allow_nan=False)
        )
    elif isinstance(bound, annotated_types.Lt):
        value = draw(st.floats(min_value=bound.lt, max_value=1e9, allow_nan=False))
    else:
        value = draw(
            st.floats(min_value=bound.le, exclude_min=True, max_value=1e9, allow_nan=False)
        )
    return key, value


def _set(recipe: dict, dotted: str, value) -> dict:
    recipe = copy.deepcopy(recipe)
    *head, leaf = dotted.split(".")
    target = recipe
    for part in head:
        target = target.setdefault(part, {})
    target[leaf] = value
    return recipe


def _problems(tmp_path: Path, recipe: dict) -> list[str]:
    path = tmp_path / F
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    problems = recipe_problems(path)
    assert all(p.source == str(path) for p in problems)
    return [p.key for p in problems]


FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def test_the_schema_has_bounded_fields_and_sections_to_generate_from():
    assert len(BOUNDED) >= 15 and {"train.learning_rate", "lora.r", "eval.confidence"} <= {
        k for k, _ in BOUNDED
    }
    assert {"", "model", "model.qlora", "train", "tracking.wandb", "eval.prices"} <= set(SECTIONS)


@FAST
@given(case=out_of_range())
def test_any_out_of_range_number_is_rejected_at_its_key(tmp_path, case):
    key, value = case
    # Integers where the field is an integer, so the range (not the type) is what fails.
    if float(value).is_integer():
        value = int(value)
    assert key in _problems(tmp_path, _set(MINIMAL_RECIPE, key, value))


@FAST
@given(
    key=st.sampled_from(BOUNDED).map(lambda kb: kb[0]),
    value=st.one_of(
        st.text(alphabet="abcxyz", min_size=1),
        st.lists(st.integers(), min_size=1),
        st.dictionaries(st.text(min_size=1), st.integers(), min_size=1),
    ),
)
def test_any_wrong_type_for_a_number_is_rejected_at_its_key(tmp_path, key, value):
    assert key in _problems(tmp_path, _set(MINIMAL_RECIPE, key, value))


@FAST
@given(section=st.sampled_from(SECTIONS), name=st.from_regex(r"[a-z][a-z_]{0,14}", fullmatch=True))
def test_an_unknown_key_at_any_level_is_named(tmp_path, section, name):
    model = Recipe
    for part in filter(None, section.split(".")):
        model = section_type(model.model_fields[part].annotation)
    if name in model.model_fields or (not section and name == "base"):
        return  # a valid key, not an unknown one
    dotted = f"{section}.{name}" if section else name
    recipe = _set(MINIMAL_RECIPE, dotted, 1)
    assert _problems(tmp_path, recipe) == [dotted]
