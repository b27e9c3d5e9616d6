"""A model card that carries the evidence: why this model, against what, measured where.

Written as `README.md` into every deployable output of a run (its `adapter/` or full `model/`,
and an export's directory), with Hugging Face metadata built by `huggingface_hub`'s
`ModelCardData` and `EvalResult` (base model and how this model relates to it, library,
licence, pipeline tag, tags, and a `model-index` with the test metrics), and a body written
here, from no library template, so no placeholder text is left: the comparison with every
baseline (intervals, paired tests), latency, memory and cost on the named machine, the
verdict, the data card's summary with its licence caveats and leakage, intended use and
limits, the recipe, and how to use the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune.data import prepared_path
from finetune.files import write_atomic
from finetune.models import REGISTRY
from finetune.models.heads import (
    CAUSAL_LM,
    SEQ2SEQ_LM,
    SEQUENCE_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    run_head,
)
from finetune.recipe import Recipe
from finetune.report import format as F
from finetune.report.judge import lead_sentence
from finetune.report.results import load_results, primary_metric, quality_comparisons
from finetune.report.verdict import bottom_line, quality_sentence, teacher_sentence
from finetune.tasks.types import task_type

CARD = "README.md"
# How each output relates to its base model, and the library that loads it.
FORMS = {
    "adapter": ("adapter", "peft"),
    "merged": ("finetune", "transformers"),
    "model": ("finetune", "transformers"),
    "gguf": ("finetune", "gguf"),
}


def write_card(
    recipe: Recipe, run_dir: Path, directory: Path, form: str, results: dict | None = None
) -> Path:
    """The run's model card written as `directory/README.md` for an output of `form`
    (`adapter`, `merged` or `model`); `results` are the run's, read here when not given."""
    results = _results(run_dir) if results is None else results
    return write_atomic(directory / CARD, card_text(recipe, run_dir, form, results, directory))


def card_text(
    recipe: Recipe, run_dir: Path, form: str, results: dict | None, directory: Path | None = None
) -> str:
    """The card's text; `directory` is where it goes (an export's files are listed from it)."""
    from huggingface_hub import ModelCard

    header = metadata(recipe, run_dir, form, results).to_yaml()
    sections = _body(recipe, run_dir, form, results, directory or run_dir / form)
    body = "\n\n".join(section for section in sections if section)
    return str(ModelCard(f"---\n{header}\n---\n\n{body}\n"))


def _results(run_dir: Path) -> dict[str, Any] | None:
    """The run's evaluation, if it has one (a card written before evaluation says so)."""
    return load_results(run_dir) if (run_dir / "eval" / "results.json").is_file() else None


def metadata(recipe: Recipe, run_dir: Path, form: str, results: dict | None) -> Any:
    """The Hub metadata: what the model is, where it comes from, what it scored."""
    from huggingface_hub import ModelCardData

    relation, library = FORMS[form]
    entry = REGISTRY.get(recipe.model.base)
    return ModelCardData(
        model_name=recipe.name,
        base_model=entry.hub_id if entry else _hub_id(recipe.model.base),
        base_model_relation=relation,
        library_name=library,
        license=_licence(entry.licence if entry else None),
        pipeline_tag=_pipeline(run_dir),
        tags=[
            "finetune",
            recipe.task.type,
            recipe.train.method,
            *(["lora"] if relation == "adapter" else []),
            *(["gguf"] if form == "gguf" else []),
        ],
        eval_results=_eval_results(recipe, results) or None,
    )


def _hub_id(ref: str) -> str | None:
    """A base model named by its Hub id; a local directory is no Hub model."""
    return ref if "/" in ref and not Path(ref).exists() else None


def _licence(text: str | None) -> str:
    """The registry's licence as the Hub's identifier (`apache-2.0`), else `other`."""
    first = (text or "").split(" ")[0].lower()
    return first if first in ("apache-2.0", "mit", "gemma", "llama3.2", "cc-by-4.0") else "other"


def _pipeline(run_dir: Path) -> str:
    return {
        SEQUENCE_CLASSIFICATION: "text-classification",
        TOKEN_CLASSIFICATION: "token-classification",
        SEQ2SEQ_LM: "text2text-generation",
    }.get(run_head(run_dir), "text-generation")


def _eval_results(recipe: Recipe, results: dict | None) -> list[Any]:
    """The specialist's test metrics as `model-index` entries."""
    from huggingface_hub import EvalResult

    if results is None:
        return []
    own = results["systems"][0]
    return [
        EvalResult(
            task_type=_pipeline_task(recipe),
            dataset_type=recipe.data.source or recipe.name,
            dataset_name=recipe.data.source or recipe.name,
            dataset_split="test",
            metric_type=name,
            metric_value=round(own["metrics"][name]["value"], 4),
        )
        for name in results["metrics"]
    ]


def _pipeline_task(recipe: Recipe) -> str:
    return {"classification": "text-classification", "extraction": "token-classification"}.get(
        recipe.task.type, "question-answering"
    )


def _body(
    recipe: Recipe, run_dir: Path, form: str, results: dict | None, directory: Path
) -> list[str]:
    return [
        _summary(recipe, form),
        _comparison(results),
        _costs(results),
        _data(recipe, results),
        _use_and_limits(recipe, results),
        _usage(recipe, run_dir, form, directory),
        f"## Recipe\n\n```yaml\n{(run_dir / 'recipe.yaml').read_text().strip()}\n```",
    ]


def _summary(recipe: Recipe, form: str) -> str:
    labels = f" ({', '.join(recipe.task.labels)})" if recipe.task.labels else ""
    what = {
        "adapter": "A LoRA adapter on",
        "merged": "The LoRA adapter merged into",
        "model": "A full fine-tune of",
        "gguf": "GGUF files for llama.cpp and Ollama of a fine-tune of",
    }[form]
    return (
        f"# {recipe.name}\n\n{what} `{recipe.model.base}` for {recipe.task.type}{labels}, "
        "trained and evaluated by the `finetune` workbench. The run directory holds the recipe, "
        "provenance, the training log, and the full report (`report/`)."
    )


def _comparison(results: dict | None) -> str:
    if results is None:
        return "## Evaluation\n\nNot evaluated yet: run `finetune eval` on the run, then `finetune report`."
    metric = primary_metric(results)
    rows = ["| system | model | " + metric + " (95% interval) |", "| --- | --- | --- |"]
    for s in results["systems"]:
        m = s["metrics"][metric]
        rows.append(
            f"| {s['name']} | {s['model']} | {m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}] |"
        )
    # With a judge, quality is its call: what it did first, then its win rates.
    judged = [lead_sentence(results)] if results.get("judge") else []
    sentences = judged + [quality_sentence(c) for c in quality_comparisons(results)]
    return "\n\n".join(
        [
            f"## Evaluation\n\nOn {results['test_items']} held-out test items, every system scored on the same items:",
            "\n".join(rows),
            *sentences,
            f"**{bottom_line(results)}**",
        ]
    )


def _costs(results: dict | None) -> str:
    if results is None:
        return ""
    hardware = results["hardware"]
    rows = [
        "| system | p50 latency | peak memory | cost per 1k requests |",
        "| --- | --- | --- | --- |",
    ]
    for s in results["systems"]:
        memory = s["peak_memory_bytes"]
        rows.append(
            f"| {s['name']} | {F.ms(s['latency_ms']['p50'])} | "
            f"{'remote' if memory is None else F.gib(memory)} | {F.usd(s['cost_per_1k']['usd'])} |"
        )
    where = f"Measured on {hardware['description']} ({hardware['device']}, {hardware['dtype']})."
    return "## Latency, memory and cost\n\n" + where + "\n\n" + "\n".join(rows)


def _data(recipe: Recipe, results: dict | None) -> str:
    path = prepared_path(recipe) / "card.json"
    if not path.is_file():
        return ""
    taught = f"\n\n{teacher_sentence(results)}" if results and results.get("teacher") else ""
    card = json.loads(path.read_text())
    leakage = card.get("leakage", {}).get("test", {})
    leaks = len(leakage.get("exact", [])) + len(leakage.get("near", []))
    rows = card.get("rows", {})
    counts = (
        ", ".join(f"{n} {split}" for split, n in rows.items()) if isinstance(rows, dict) else rows
    )
    return (
        f"## Data\n\n{card.get('description', '').rstrip('.')}. Source: {card.get('source')}. "
        f"Rows: {counts}. Licence: {card.get('licence')}. Test items that repeat or nearly repeat "
        f"a training item: {leaks}.{taught}"
    )


def _use_and_limits(recipe: Recipe, results: dict | None) -> str:
    task = task_type(recipe.task)
    scope = (
        f"It answers one thing: {recipe.task.type} as the recipe's instruction puts it "
        f'("{recipe.task.instruction.strip()}")'
        + (f", with one of {len(recipe.task.labels)} labels" if recipe.task.labels else "")
        + f"; its output field is `{task.target}`."
    )
    tested = (
        f" Its figures hold for text like its {results['test_items']} test items, cut to "
        f"{recipe.model.max_length} tokens;"
        if results
        else ""
    )
    return (
        f"## Intended use and limits\n\n{scope}{tested} text from another domain, language or "
        "time can score lower than reported. It was not tested for fairness across groups of "
        "people, nor for adversarial input. Check the data licence above before redistributing."
    )


def _usage(recipe: Recipe, run_dir: Path, form: str, directory: Path) -> str:
    entry = REGISTRY.get(recipe.model.base)
    base = entry.hub_id if entry else recipe.model.base
    snippets = [
        f"```bash\nfinetune predict {run_dir} items.jsonl\n"
        f"finetune serve {run_dir}   # HTTP on 127.0.0.1:8000: OpenAI chat, /v1/classify\n```"
    ]
    decoder = run_head(run_dir) == CAUSAL_LM
    if form == "adapter" and decoder:
        snippets.append(
            "```python\nfrom peft import AutoPeftModelForCausalLM\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{run_dir / "adapter"}")\n```'
        )
        snippets.append(
            f"```bash\nvllm serve {base} --enable-lora --lora-modules {recipe.name}={run_dir / 'adapter'}\n"
            f"finetune export {run_dir} --adapter-gguf   # then: llama-server -m <base>.gguf --lora gguf/adapter-f16.gguf\n```"
        )
    elif form in ("merged", "model"):
        snippets.append(
            "```python\nfrom transformers import AutoModel\n"
            'model = AutoModel.from_pretrained("<this directory>")\n```'
        )
    if form == "gguf":
        snippets.append(_gguf_usage(recipe, directory))
    elif decoder:
        snippets.append(
            f"```bash\nfinetune export {run_dir} --gguf --quant q8_0   # llama.cpp, Ollama\n```"
        )
    return "## How to use\n\n" + "\n\n".join(snippets)


def _gguf_usage(recipe: Recipe, directory: Path) -> str:
    """llama.cpp's server and Ollama on the GGUF files the directory holds."""
    models = sorted(p.name for p in directory.glob("model-*.gguf"))
    lines = [f"llama-server -m {m} --port 8080   # OpenAI-compatible, on llama.cpp" for m in models]
    if (directory / "Modelfile").is_file():
        lines.append(f"ollama create {recipe.name} -f Modelfile && ollama run {recipe.name}")
    if (directory / "adapter-f16.gguf").is_file():
        lines.append("llama-server -m <the base model>.gguf --lora adapter-f16.gguf")
    return "```bash\n" + "\n".join(lines) + "\n```"


def write_run_cards(recipe: Recipe, run_dir: Path) -> list[Path]:
    """The card in each deployable output the run holds: `adapter/` or `model/`, `merged/` and
    `gguf/`."""
    outputs = [(run_dir / name, name) for name in ("adapter", "model", "merged", "gguf")]
    results = _results(run_dir)
    return [write_card(recipe, run_dir, d, form, results) for d, form in outputs if d.is_dir()]
