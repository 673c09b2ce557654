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


def test_classes_map_to_offensive_and_neutral_and_the_three_splits_are_disjoint(tmp_path):
    rows = [(str(k % 3), f"tweet number {k} says some rather long words here") for k in range(300)]
    source = davidson_file(tmp_path / "labeled_data.csv", rows + [("2", "RT @x: hi")])  # too short once cleaned
    assert {label for _, _, label in read_davidson(source)} == {"offensive", "neutral"}
    counts = write_toxicity(source, tmp_path / "data")
    probe, judge = ([row["text"] for row in csv.DictReader(open(tmp_path / "data" / name))]
                    for name in ("toxicity.csv", "toxicity-judge.csv"))
    prefixes = (tmp_path / "data" / "toxicity-prefixes.txt").read_text().splitlines()
    assert 20 < counts["toxicity-judge.csv"] < 60 and 5 <= len(prefixes) == counts["toxicity-prefixes.txt"] <= 40
    assert counts["toxicity.csv"] + counts["toxicity-judge.csv"] < 300  # the prompt rows are in neither
    assert not set(probe) & set(judge)
    for prefix in prefixes:  # the first half of an offensive row that neither the probe nor the judges see
        number = int(prefix.split()[2])
        assert number % 3 in (0, 1) and not any(text.startswith(prefix) for text in probe + judge)
    labels = {row["text"]: row["label"] for name in ("toxicity.csv", "toxicity-judge.csv")
              for row in csv.DictReader(open(tmp_path / "data" / name))}
    assert {labels[text] for text in labels if int(text.split()[2]) % 3 == 2} == {"neutral"}
    judged = [row["label"] for row in csv.DictReader(open(tmp_path / "data" / "toxicity-judge.csv"))]
    assert judged.count("offensive") == judged.count("neutral")  # the tweets' 2:1 mix here, balanced for the judges


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


def test_a_file_with_one_label_only_is_refused_for_the_judges(tmp_path):
    source = davidson_file(tmp_path / "labeled_data.csv", [("1", f"tweet number {k} has long words") for k in range(60)])
    with pytest.raises(DglmError, match=r"needs rows of both labels .*\{'offensive': \d+\}"):
        write_toxicity(source, tmp_path / "data")
