"""Toxicity data from a file in the layout of Davidson et al.'s labeled_data.csv (synthetic rows here: the real
tweets never enter the project)."""

import csv

import pytest

from dglm.data.toxicity import clean_tweet, read_davidson, write_toxicity
from dglm.errors import DglmError

HEADER = ["", "count", "hate_speech", "offensive_language", "neither", "class", "tweet"]


def davidson_file(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for number, (klass, tweet) in enumerate(rows):
            writer.writerow([number, 3, 0, 0, 3, klass, tweet])
    return path


def test_tweets_lose_retweet_marks_user_names_links_and_entities():
    assert clean_tweet("!!! RT @someone: you are a clown &amp; a fool http://t.co/x1") == "you are a clown & a fool"
    assert clean_tweet("@a @b   what a lovely day") == "what a lovely day"


def test_classes_map_to_offensive_and_neutral_and_the_splits_are_disjoint(tmp_path):
    rows = [(str(k % 3), f"tweet number {k} says words") for k in range(200)]
    source = davidson_file(tmp_path / "labeled_data.csv", rows + [("2", "RT @x: hi")])  # too short once cleaned
    assert {label for _, _, label in read_davidson(source)} == {"offensive", "neutral"}
    counts = write_toxicity(source, tmp_path / "data")
    assert counts["toxicity.csv"] + counts["toxicity-judge.csv"] == 200 and 20 < counts["toxicity-judge.csv"] < 60
    probe, judge = ([row["text"] for row in csv.DictReader(open(tmp_path / "data" / name))]
                    for name in ("toxicity.csv", "toxicity-judge.csv"))
    assert not set(probe) & set(judge)
    labels = {row["text"]: row["label"] for name in ("toxicity.csv", "toxicity-judge.csv")
              for row in csv.DictReader(open(tmp_path / "data" / name))}
    assert [labels[f"tweet number {k} says words"] for k in (3, 4, 5)] == ["offensive", "offensive", "neutral"]


@pytest.mark.parametrize("header, rows, message", [
    (["", "class", "text"], [["0", "1", "a b c"]], "lacks the column"),
    (HEADER, [["0", 3, 0, 0, 3, "7", "some words here"]], "has class '7'"),
])
def test_a_file_of_another_layout_is_refused(tmp_path, header, rows, message):
    path = tmp_path / "bad.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    with pytest.raises(DglmError, match=message):
        read_davidson(path)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(DglmError, match="does not exist; pass Davidson"):
        read_davidson(tmp_path / "nowhere.csv")
