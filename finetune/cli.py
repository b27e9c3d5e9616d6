"""The `finetune` command line: one subcommand per pipeline stage.

Heavy stages are imported inside their command so `finetune validate` and `--help`
stay fast. User-fixable problems (`FinetuneError`) print one message and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from finetune.errors import FinetuneError

app = typer.Typer(
    name="finetune",
    help="Fine-tune a small specialist model from a recipe and measure it against general baselines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Overrides of the form key.path=value, type-checked like the file (e.g. lora.r=8).",
        show_default=False,
    ),
]


class NotImplementedYet(FinetuneError):
    def __init__(self, command: str):
        super().__init__(f"`finetune {command}` is not implemented yet.")


@app.command()
def validate(
    items: Annotated[
        list[str],
        typer.Argument(
            help="Recipe files, optionally followed by key.path=value overrides applied to each.",
            show_default=False,
        ),
    ],
) -> None:
    """Check recipes against the schema; report every problem at once. Exit 0 when all are valid, 2 otherwise."""
    from finetune.recipe import RecipeError, load_recipe

    overrides = [i for i in items if "=" in i]
    paths = [i for i in items if "=" not in i]
    if not paths:
        raise FinetuneError(
            "give at least one recipe file, e.g. `finetune validate recipes/*.yaml`"
        )
    failed = 0
    for path in paths:
        try:
            recipe = load_recipe(path, overrides)
        except RecipeError as exc:
            failed += 1
            err.print(f"{path}: invalid\n{exc}", markup=False)
            continue
        out.print(
            f"{path}: ok ({recipe.name}: {recipe.task.type} on {recipe.data.source}, base model {recipe.model.base})",
            markup=False,
        )
    if failed:
        raise typer.Exit(2)


@app.command()
def prepare(recipe: RecipeArg, overrides: OverridesArg = None) -> None:
    """Build the recipe's dataset into data/<name>/ (JSONL splits plus a data card)."""
    raise NotImplementedYet("prepare")


@app.command()
def train(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue an interrupted run directory from its last checkpoint."),
    ] = None,
) -> None:
    """Train the specialist and write runs/<recipe name>/<run id>/."""
    raise NotImplementedYet("train")


@app.command("eval")
def evaluate(
    recipe: RecipeArg,
    run: Annotated[Path, typer.Option(help="Run directory holding the trained specialist.")],
    overrides: OverridesArg = None,
) -> None:
    """Score the specialist and every baseline on the same held-out items."""
    raise NotImplementedYet("eval")


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="Evaluated run directory.", show_default=False)],
) -> None:
    """Write the comparison report (Markdown and HTML) into the run directory."""
    raise NotImplementedYet("report")


def main() -> None:
    try:
        app()
    except FinetuneError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)
