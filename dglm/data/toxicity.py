"""Toxicity data from Davidson et al.'s labelled tweets (MIT licence; the file is the user's, never copied into the
project): a probe split and a disjoint judge split, `text,label` CSVs with labels offensive and neutral.

Hate speech and offensive language are merged into one label, offensive: the tweets coded hate speech are few
(about 6%) and the line the annotators drew between the two is the paper's subject, not a steering target. The
text is cleaned of what only tweets have (retweet marks, user names, links, HTML entities).
"""

from __future__ import annotations

import csv
import html
import re
from pathlib import Path

from dglm.data.corpus import held_out
from dglm.errors import DglmError

COLUMNS = ("class", "tweet")
LABELS = {"0": "offensive", "1": "offensive", "2": "neutral"}  # Davidson's classes: hate speech, offensive, neither
JUDGE_FRACTION = 0.2


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
                raise DglmError(f"{path} row {number + 1} has class {record['class']!r}; Davidson's classes are 0, 1, 2")
            text = clean_tweet(record["tweet"])
            if len(text.split()) >= 3:
                rows.append((record.get("") or str(number), text, LABELS[record["class"]]))
    return rows


def write_toxicity(source: Path, out_dir: Path) -> dict[str, int]:
    """Write toxicity.csv (the probe's) and toxicity-judge.csv (a fifth of the rows, by a hash of their id, for the
    judges), and return their row counts."""
    rows = read_davidson(source)
    splits = {"toxicity.csv": [], "toxicity-judge.csv": []}
    for row_id, text, label in rows:
        splits["toxicity-judge.csv" if held_out(f"davidson-{row_id}", JUDGE_FRACTION) else "toxicity.csv"].append((text, label))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        with open(out_dir / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(split)
    return {name: len(split) for name, split in splits.items()}
