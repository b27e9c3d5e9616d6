"""Render the generated reference blocks of the documentation: the recipe and experiment
references (from their schemas) and the CLI reference (from the Typer app).

Each block lives in one page, between `<!-- NAME:start -->` and `<!-- NAME:end -->`: the recipe
reference in docs/recipe-reference.md, the experiment reference in docs/experiments.md, the CLI
reference in README.md. `python -m finetune.docs [ROOT]` rewrites every block in every page under
the repository root ROOT (default: the current directory); a test fails when any is stale.
"""

from __future__ import annotations

import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from finetune.recipe.schema import Recipe, section_type


def _blocks() -> dict[str, dict[str, Callable[[], str]]]:
    """Page (relative to the repository root) -> the blocks it holds and what builds each."""
    return {
        "README.md": {"cli-reference": cli_reference},
        "docs/recipe-reference.md": {"recipe-reference": recipe_reference},
        "docs/experiments.md": {"experiment-reference": experiment_reference},
    }


def recipe_reference(root: type[BaseModel] = Recipe) -> str:
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    rows += list(_field_rows(root, ""))
    return "\n".join(rows)


def experiment_reference() -> str:
    from finetune.experiment.schema import Experiment

    return recipe_reference(Experiment)


def _field_rows(model: type[BaseModel], prefix: str):
    for name, field in model.model_fields.items():
        section = section_type(field.annotation)
        key = f"{prefix}{name}" + (
            "[]" if section and typing.get_origin(field.annotation) is list else ""
        )
        if section and typing.get_origin(field.annotation) is not list:
            yield f"| **`{key}`** | section | | {field.description} |"
        else:
            yield f"| `{key}` | {_type_name(field)} | {_default(field)} | {field.description} |"
        if section:
            yield from _field_rows(section, f"{key}.")


BOUND_SYMBOLS = (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"))


def _type_name(field: FieldInfo) -> str:
    return _annotation_text(field.annotation) + _bounds(field.metadata)


def _bounds(metadata: list[Any]) -> str:
    """Render numeric constraints (annotated_types.Gt etc., possibly inside a nested FieldInfo)."""
    flat = [inner for m in metadata for inner in (m.metadata if isinstance(m, FieldInfo) else [m])]
    bounds = [
        f"{sym} {getattr(m, attr)}"
        for m in flat
        for attr, sym in BOUND_SYMBOLS
        if getattr(m, attr, None) is not None
    ]
    return f" ({', '.join(bounds)})" if bounds else ""


def _annotation_text(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is typing.Annotated:
        return _annotation_text(args[0]) + _bounds(list(args[1:]))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join("null" if a is type(None) else _annotation_text(a) for a in args)
    if origin is list:
        return f"list of {_annotation_text(args[0])}"
    if origin is dict:
        return f"map {_annotation_text(args[0])} → {_annotation_text(args[1])}"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    value = field.default
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return "; ".join(f"`{v.model_dump()}`" for v in value)
    return "null" if value is None else f"`{value!r}`".replace("|", "\\|").replace("\n", "\\n")


def cli_reference() -> str:
    import typer.main

    from finetune.cli import app

    group = typer.main.get_command(app)
    rows = ["| command | what it does |", "| --- | --- |"]
    for name, command in group.commands.items():
        ctx = command.make_context(name, [], resilient_parsing=True)
        usage = (
            " ".join(command.collect_usage_pieces(ctx))
            .upper()
            .translate(str.maketrans("", "", "{}"))
        )
        options = [
            f"`{p.opts[0]}`"
            for p in command.params
            if getattr(p, "opts", None) and p.opts[0].startswith("--") and p.opts[0] != "--help"
        ]
        extra = f" Options: {', '.join(options)}." if options else ""
        # A table cell is one line: the docstring's first paragraph, its lines joined.
        summary = " ".join((command.help or "").strip().split("\n\n")[0].split())
        rows.append(f"| `finetune {name} {usage}` | {summary}{extra} |")
    return "\n".join(rows)


def render(text: str, blocks: dict[str, Callable[[], str]], page: str = "README.md") -> str:
    """`text` with each named block's contents replaced by what its builder renders now."""
    for name, build in blocks.items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{page} has no <!-- {name}:start --> ... <!-- {name}:end --> block")
        text = pattern.sub(lambda m, b=build: m.group(1) + b() + "\n" + m.group(2), text)
    return text


def rendered(root: Path) -> dict[Path, tuple[str, str]]:
    """Every page with generated blocks under `root`: (its text now, its text re-rendered)."""
    pages = {}
    for page, blocks in _blocks().items():
        text = (root / page).read_text()
        pages[root / page] = (text, render(text, blocks, page))
    return pages


def stale(root: Path) -> list[Path]:
    """The pages under `root` whose generated blocks differ from what the sources give now."""
    return [path for path, (text, new) in rendered(root).items() if text != new]


def main(argv: list[str] = sys.argv[1:]) -> None:
    root = Path(argv[0] if argv else ".")
    for path, (text, new) in rendered(root).items():
        if new != text:
            path.write_text(new)
        print(f"{'updated' if new != text else 'up to date'}: {path}")


if __name__ == "__main__":
    main()
