"""Read (text, label) pairs from a CSV or JSONL file, or a `datasets` name for users with a hub."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from dglm.errors import DglmError


def read_labelled(source: str, text_column: str, label_column: str,
                  split: str = "train") -> tuple[list[str], list[str]]:
    path = Path(source)
    if path.suffix.lower() in {".csv", ".tsv"} or (path.exists() and path.suffix.lower() not in {".jsonl", ".json"}):
        records, columns = _read_csv(path)
    elif path.suffix.lower() in {".jsonl", ".json"}:
        records, columns = _read_jsonl(path)
    else:
        records, columns = _read_dataset(source, split)
    missing = [c for c in (text_column, label_column) if c not in columns]
    if missing:
        raise DglmError(f"{source} has no column(s) {missing}; its columns are: {', '.join(columns)}")
    pairs = [(str(r[text_column]).strip(), str(r[label_column]).strip()) for r in records]
    pairs = [(text, label) for text, label in pairs if text and label]
    if not pairs:
        raise DglmError(f"{source} has no rows with both a {text_column!r} and a {label_column!r} value")
    return [t for t, _ in pairs], [l for _, l in pairs]


def _read_csv(path: Path):
    if not path.is_file():
        raise DglmError(f"data file {path} does not exist")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        records = list(reader)
        return records, list(reader.fieldnames or [])


def _read_jsonl(path: Path):
    if not path.is_file():
        raise DglmError(f"data file {path} does not exist")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise DglmError(f"{path} line {number} is not valid JSON") from None
    columns = sorted({key for record in records for key in record})
    return records, columns


def _read_dataset(name: str, split: str):
    try:
        import datasets
    except ImportError:
        raise DglmError(f"{name!r} is not a file; to use a hub data set, `pip install dglm[hub]`") from None
    try:
        table = datasets.load_dataset(name, split=split)
    except Exception as error:
        raise DglmError(f"could not load data set {name!r} ({type(error).__name__}); "
                        "pass a CSV or JSONL file") from None
    return list(table), list(table.column_names)


def pick_sentences(texts: list[str], labels: list[str], per_label: int, min_words: int,
                   seed: int) -> dict[str, list[list[str]]]:
    """Up to `per_label` random sentences of each label with at least `min_words` words, as word lists."""
    rng = random.Random(seed)
    picked = {}
    for label in sorted(set(labels)):
        sentences = [t.split() for t, l in zip(texts, labels) if l == label and len(t.split()) >= min_words]
        rng.shuffle(sentences)
        picked[label] = sentences[:per_label]
    return picked
