"""Toxicity data from Davidson et al.'s labelled tweets (MIT licence; the file is the user's, never copied into the
project): a probe split, a judge split and the detoxification benchmark's prefixes, disjoint; `text,label` CSVs
with labels offensive and neutral.

Hate speech and offensive language are merged into one label, offensive: the tweets coded hate speech are few
(about 6%) and the line the annotators drew between the two is the paper's subject, not a steering target. The
text is cleaned of what only tweets have (retweet marks, user names, links, HTML entities).
"""

from __future__ import annotations

import csv
import html
import random
import re
from pathlib import Path

from dglm.data.corpus import hash_fraction, write_labelled_csv
from dglm.errors import DglmError

COLUMNS = ("class", "tweet")
LABELS = {"0": "offensive", "1": "offensive", "2": "neutral"}  # Davidson's classes: hate speech, offensive, neither
JUDGE_FRACTION = 0.2  # rows the judges train and are scored on
PROMPT_FRACTION = 0.08  # rows whose first words become the detoxification benchmark's prefixes
PREFIXES = 100


def clean_tweet(text: str) -> str:
    """A tweet without retweet marks, @user names, links or HTML entities, its whitespace collapsed."""
    text = html.unescape(text)
    text = re.sub(r"https?://\S+|\bRT\b|@\w+:?", " ", text)
    return re.sub(r"\s+", " ", text).strip(" :!\"")


def read_davidson(path: Path) -> list[tuple[str, str, str]]:
    """(row id, cleaned text, label) for each row of Davidson's labeled_data.csv with some text left."""
    if not path.is_file():
        raise DglmError(f"{path} does not exist; pass Davidson et al.'s labeled_data.csv")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise DglmError(f"{path} lacks the column(s) {missing} of Davidson et al.'s labeled_data.csv "
                            f"(its columns: {reader.fieldnames})")
        rows = []
        for number, record in enumerate(reader):
            if record["class"] not in LABELS:
                raise DglmError(f"{path} row {number + 1} has class {record['class']!r}; "
                                "Davidson's classes are 0, 1, 2")
            text = clean_tweet(record["tweet"])
            if len(text.split()) >= 3:
                rows.append((record.get("") or str(number), text, LABELS[record["class"]]))
    return rows


def write_toxicity(source: Path, out_dir: Path) -> dict[str, int]:
    """Write toxicity.csv (the probe's), toxicity-judge.csv (from a fifth of the rows, for the judges) and
    toxicity-prefixes.txt (challenging prefixes: the first words of offensive rows that neither the probe nor the
    judges see), splitting by a hash of each row's id; return their row counts."""
    rows = read_davidson(source)
    splits: dict[str, list] = {"toxicity.csv": [], "toxicity-judge.csv": [], "prompt rows": []}
    for row_id, text, label in rows:
        position = hash_fraction(f"davidson-{row_id}")
        name = ("toxicity-judge.csv" if position < JUDGE_FRACTION else
                "prompt rows" if position < JUDGE_FRACTION + PROMPT_FRACTION else "toxicity.csv")
        splits[name].append((text, label))
    splits["toxicity-judge.csv"] = balanced_labels(splits["toxicity-judge.csv"])
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("toxicity.csv", "toxicity-judge.csv"):
        write_labelled_csv(out_dir / name, splits[name])
    prefixes = challenging_prefixes(splits["prompt rows"])
    (out_dir / "toxicity-prefixes.txt").write_text("".join(prefix + "\n" for prefix in prefixes), encoding="utf-8")
    return {"toxicity.csv": len(splits["toxicity.csv"]), "toxicity-judge.csv": len(splits["toxicity-judge.csv"]),
            "toxicity-prefixes.txt": len(prefixes)}


def balanced_labels(rows: list[tuple[str, str]], seed: int = 0) -> list[tuple[str, str]]:
    """As many rows of each label as the rarest label has (a seeded random choice, in the rows' order).

    The judges score model text, which is mostly not offensive; trained on the tweets' own mix (five offensive to one
    neutral) they start from a prior of 83% offensive and call ordinary chat offensive."""
    by_label: dict[str, list[int]] = {}
    for index, (_, label) in enumerate(rows):
        by_label.setdefault(label, []).append(index)
    if len(by_label) < 2:
        counts = {label: len(indices) for label, indices in by_label.items()}
        raise DglmError(f"the judges' split needs rows of both labels to train on, got {counts or 'no rows'}; "
                        "is the file Davidson et al.'s labeled_data.csv, whole?")
    size = min(len(indices) for indices in by_label.values())
    rng = random.Random(seed)
    kept = {index for indices in by_label.values() for index in rng.sample(indices, size)}
    return [row for index, row in enumerate(rows) if index in kept]


def challenging_prefixes(rows: list[tuple[str, str]], count: int = PREFIXES, seed: int = 0) -> list[str]:
    """The first half (at least four words) of `count` offensive rows of eight words or more, drawn at random:
    RealToxicityPrompts' way of asking a model to continue text that is heading somewhere ugly."""
    candidates = sorted({text for text, label in rows if label == "offensive" and len(text.split()) >= 8})
    chosen = random.Random(seed).sample(candidates, min(count, len(candidates)))
    return [" ".join(text.split()[: max(4, len(text.split()) // 2)]) for text in chosen]
