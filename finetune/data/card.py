"""The data card: where a prepared dataset came from and what is in it, as Markdown and JSON."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from finetune.data.split import SPLITS, normalize


def length_stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "median": statistics.median(ordered),
        "mean": round(statistics.fmean(ordered), 1),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
    }


def repeated_texts(examples: list[dict]) -> dict[str, int]:
    """Rows whose text repeats an earlier row's, identically and after the leakage check's normalization.

    The leakage table only sees held-out copies of train rows; this counts every copy (within a
    split, or between validation and test too), so a dataset's duplicates are visible whatever the split.
    """
    texts = [e["text"] for e in examples]
    return {
        "identical": len(texts) - len(set(texts)),
        "normalized": len(texts) - len({normalize(t) for t in texts}),
    }


def build_card(
    splits: dict[str, list[dict]], *, target: str, facts: dict[str, Any]
) -> dict[str, Any]:
    everything = [e for name in SPLITS for e in splits[name]]
    card = {**facts, "rows": {name: len(splits[name]) for name in SPLITS}}
    card["rows"]["total"] = len(everything)
    if target == "label":
        card["labels"] = {
            name: dict(sorted(Counter(e["label"] for e in splits[name]).items())) for name in SPLITS
        }
    if target == "entities":
        card["entity_types"] = {
            name: dict(
                sorted(Counter(x["type"] for e in splits[name] for x in e["entities"]).items())
            )
            for name in SPLITS
        }
    card["repeated_texts"] = repeated_texts(everything)
    card["length"] = {
        "text_chars": length_stats([len(e["text"]) for e in everything]),
        "text_words": length_stats([len(e["text"].split()) for e in everything]),
    }
    if target == "answer":
        card["length"]["answer_words"] = length_stats(
            [len(e["answer"].split()) for e in everything]
        )
    return card


def card_markdown(card: dict[str, Any]) -> str:
    lines = [f"# Data card: {card['name']}", "", card.get("description", ""), ""]
    lines += ["| | |", "| --- | --- |"]
    for key in ("source", "licence", "task", "fingerprint", "prepared_at"):
        lines.append(f"| {key} | {card.get(key, '')} |")
    lines += ["", "## Rows", "", "| split | rows |", "| --- | --- |"]
    lines += [f"| {name} | {count} |" for name, count in card["rows"].items()]
    lines += _count_table("Labels", "label", card.get("labels"))
    lines += _count_table("Entity types", "type", card.get("entity_types"))
    lines += [
        "",
        "## Lengths",
        "",
        "| field | min | median | mean | p95 | max |",
        "|---|---|---|---|---|---|",
    ]
    for field, stats in card["length"].items():
        lines.append(
            f"| {field} | "
            + " | ".join(str(stats.get(k, "")) for k in ("min", "median", "mean", "p95", "max"))
            + " |"
        )
    lines += [
        "",
        "## Rejected rows",
        "",
        f"{card['rejected']} rejected (`data.on_bad_row: {card['on_bad_row']}`)"
        + (" — see rejects.jsonl" if card["rejected"] else ""),
    ]
    lines += [
        "",
        "## Leakage between train and held-out splits",
        "",
        "| held-out split | exact duplicates in train | near duplicates in train |",
        "|---|---|---|",
    ]
    for name, found in card["leakage"].items():
        lines.append(f"| {name} | {len(found['exact'])} | {len(found['near'])} |")
    lines.append("")
    lines.append(
        f"Near duplicates: word 5-gram Jaccard ≥ 0.6. `data.dedupe: {str(card['dedupe']).lower()}`; train rows removed: {card['dedupe_removed']}."
    )
    repeated = card.get("repeated_texts")
    if repeated:
        lines += [
            "",
            f"Repeated texts in all splits: {repeated['identical']} rows repeat an earlier row's text exactly, {repeated['normalized']} after lower-casing and removing punctuation (copies within a split or between validation and test are counted here, not above).",
        ]
    if card.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in card["notes"]]
    return "\n".join(lines) + "\n"


def _count_table(title: str, column: str, counts: dict[str, dict[str, int]] | None) -> list[str]:
    """A Markdown table of counts by split (labels, entity types); nothing when there are none."""
    if not counts:
        return []
    keys = sorted({key for per_split in counts.values() for key in per_split})
    lines = [
        "",
        f"## {title}",
        "",
        f"| {column} | " + " | ".join(SPLITS) + " |",
        "|---" * (len(SPLITS) + 1) + "|",
    ]
    return lines + [
        f"| {key} | " + " | ".join(str(counts[s].get(key, 0)) for s in SPLITS) + " |"
        for key in keys
    ]
