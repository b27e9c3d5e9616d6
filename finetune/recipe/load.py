"""Load a recipe: read YAML safely, resolve `base:` extension, apply overrides, validate.

Every problem is collected and raised together as one `RecipeError`, each naming the
file (or command-line override) it came from and the dotted key, what was expected,
what was found, and for unknown keys the nearest valid one. What is valid but probably not
meant (an instruction that names no labels) is logged as a warning in the same form.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import BaseModel, ValidationError

from finetune.errors import FinetuneError
from finetune.recipe.checks import consistency_problems, recipe_warnings
from finetune.recipe.schema import Recipe, section_type

log = logging.getLogger(__name__)
COMMAND_LINE = "command line"
# Warnings already given in this process: an experiment loads its recipe once per cell.
_warned: set[str] = set()


@dataclass(frozen=True)
class Problem:
    source: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.key or '(top level)'}: {self.message}"


class RecipeError(FinetuneError):
    """One or more problems with a recipe; its text lists them all."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(
            f"{len(problems)} recipe {noun}:\n" + "\n".join(f"  {p}" for p in problems)
        )


@dataclass
class _Layers:
    """The merged raw recipe plus, for each dotted key, the source that last set it."""

    data: dict[str, Any]
    origin: dict[str, str]

    def source_of(self, key: str, default: str) -> str:
        while key:
            if key in self.origin:
                return self.origin[key]
            key = key.rpartition(".")[0]
        return default


def load_recipe(
    path: str | Path,
    overrides: list[str] = (),
    *,
    values: dict[str, Any] | None = None,
    origin: str = COMMAND_LINE,
) -> Recipe:
    """Read, extend, override and validate one recipe file. `values` set dotted keys to values
    directly (an experiment's cell), blamed on `origin` when they are wrong. What is valid but
    probably unintended (`recipe_warnings`) is logged as a warning, once per process."""
    path = Path(path)
    layers = _read_with_bases(path, chain=[])
    problems = _apply_overrides(layers, overrides)
    for key, value in (values or {}).items():
        set_key(layers, key, value, origin)
    if problems:
        raise RecipeError(problems)
    try:
        recipe = Recipe.model_validate(layers.data)
    except ValidationError as exc:
        raise RecipeError([describe(err, layers, str(path)) for err in exc.errors()]) from None
    cross = [Problem(layers.source_of(k, str(path)), k, m) for k, m in consistency_problems(recipe)]
    if cross:
        raise RecipeError(cross)
    _warn([Problem(layers.source_of(k, str(path)), k, m) for k, m in recipe_warnings(recipe)])
    return recipe


def _warn(problems: list[Problem]) -> None:
    """Each warning once per process, as `warning: FILE: KEY: MESSAGE`."""
    for problem in problems:
        if str(problem) not in _warned:
            _warned.add(str(problem))
            log.warning("warning: %s", problem)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The fully resolved recipe, every default filled in, ready to dump as YAML."""
    return recipe.model_dump(mode="json")


def _fail(source: str | Path, key: str, message: str) -> NoReturn:
    raise RecipeError([Problem(str(source), key, message)]) from None


def _read_yaml(path: Path, chain: list[Path]) -> dict[str, Any]:
    where = str(chain[-1]) if chain else COMMAND_LINE
    if not path.is_file():
        key = "base" if chain else ""
        _fail(where, key, f"recipe file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        _fail(str(path), "", f"invalid YAML{line}: {problem}")
    except UnicodeDecodeError as exc:
        _fail(str(path), "", f"not UTF-8 text ({exc.reason} at byte {exc.start})")
    if data is None:
        _fail(
            str(path), "", "the file is empty; a recipe needs at least name, task, data and model"
        )
    if not isinstance(data, dict):
        _fail(
            str(path),
            "",
            f"a recipe must be a mapping of keys to values; found {type(data).__name__}",
        )
    return data


def _read_with_bases(path: Path, chain: list[Path]) -> _Layers:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(p.name for p in [*chain, resolved])
        _fail(str(chain[-1]), "base", f"recipes extend each other in a cycle: {cycle}")
    data = _read_yaml(path, chain)
    base_ref = data.pop("base", None)
    if base_ref is None:
        layers = _Layers({}, {})
    elif not isinstance(base_ref, str):
        _fail(str(path), "base", f"expected the path of another recipe file; found {base_ref!r}")
    else:
        layers = _read_with_bases(path.parent / base_ref, [*chain, resolved])
    _merge_into(layers, data, str(path), prefix="")
    return layers


def _merge_into(layers: _Layers, data: dict[str, Any], source: str, prefix: str) -> None:
    """Deep-merge `data` into the layers: mappings merge, anything else replaces."""
    target = layers.data
    for part in filter(None, prefix.split(".")):
        target = target[part]
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_into(layers, value, source, prefix=f"{dotted}.")
        else:
            target[key] = value
            for old in [k for k in layers.origin if k.startswith(f"{dotted}.")]:
                del layers.origin[old]
        layers.origin[dotted] = source


def _apply_overrides(layers: _Layers, overrides: list[str]) -> list[Problem]:
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(
                Problem(
                    COMMAND_LINE,
                    key,
                    f"override {item!r} is not of the form key.path=value, e.g. lora.r=16",
                )
            )
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        set_key(layers, key, value, f"{COMMAND_LINE} ({item})")
    return problems


def set_key(layers: _Layers, key: str, value: Any, origin: str) -> None:
    """Set dotted `key` in the raw layers (sections made as needed), blaming `origin`."""
    head, _, leaf = key.rpartition(".")
    target = layers.data
    for part in filter(None, head.split(".")):
        if not isinstance(target.get(part), dict):
            target[part] = {}
        target = target[part]
    target[leaf] = value
    layers.origin[key] = origin


def describe(
    err: dict[str, Any], layers: _Layers, default_source: str, root: type[BaseModel] = Recipe
) -> Problem:
    """One pydantic error as a problem naming its source, dotted key and the fix."""
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    source = layers.source_of(key, default_source)
    kind = err["type"]
    if kind == "extra_forbidden":
        message = f"unknown key '{loc[-1]}'"
        suggestion = suggest_key(loc, root)
        message += (
            f" (did you mean {suggestion}?)"
            if suggestion
            else f"; valid keys here: {', '.join(_fields_at(loc[:-1], root))}"
        )
    elif kind == "missing":
        message = f"required key is missing: {_help_at(loc, root)}"
    else:
        expected = err["msg"][0].lower() + err["msg"][1:]
        message = f"{expected}; found {err['input']!r}"
    return Problem(source, key, message)


def _model_at(loc: list[str], root: type[BaseModel] = Recipe) -> type[BaseModel] | None:
    """The schema class a location points into (list indices and mapping keys skipped)."""
    model: type[BaseModel] | None = root
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        model = section_type(field.annotation)
    return model


def _fields_at(loc: list[str], root: type[BaseModel] = Recipe) -> list[str]:
    model = _model_at(loc, root)
    return list(model.model_fields) if model else []


def _help_at(loc: list[str], root: type[BaseModel] = Recipe) -> str:
    model = _model_at(loc[:-1], root)
    field = model.model_fields.get(loc[-1]) if model else None
    return field.description if field and field.description else "add it"


def suggest_key(loc: list[str], root: type[BaseModel] = Recipe) -> str | None:
    """The dotted name of the valid key nearest to the unknown one at `loc`, if any is close."""
    *parent, wrong = loc
    model = _model_at(parent, root)
    prefix = ".".join(p for p in parent)
    if model is not None:
        best = _closest(wrong, model)
        if best:
            return f"{prefix}.{best}" if prefix else best
    # A valid key in the wrong section: `train.r` -> `lora.r`.
    for section, field in root.model_fields.items():
        sub = section_type(field.annotation)
        if sub is not None and wrong in sub.model_fields:
            return f"{section}.{wrong}"
    return None


def _closest(wrong: str, model: type[BaseModel]) -> str | None:
    wrong_l = wrong.lower()
    scored = []
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        for candidate in [name, *extra.get("synonyms", [])]:
            distance = _edit_distance(wrong_l, candidate.lower())
            ratio = difflib.SequenceMatcher(None, wrong_l, candidate.lower()).ratio()
            truncated = len(wrong_l) >= 3 and candidate.lower().startswith(wrong_l)
            if distance <= max(1, len(candidate) // 4) or ratio >= 0.75 or truncated:
                scored.append((distance, -ratio, name))
    return min(scored)[2] if scored else None


def _edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions, adjacent swaps."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]
