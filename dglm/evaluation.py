"""Independent measurements of generated text: attribute judges, perplexity, diversity, copying.

The judges never share anything with the guidance probes: they use different features (word and
character n-gram TF-IDF, or another sentence encoder than the pipeline's) and are trained on different
data (see `dglm data build`: the *-judge.csv files). Perplexity comes from a different, larger LM.
"""

from __future__ import annotations

import math
import re
from array import array
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dglm.tables import read_labelled
from dglm.training import iter_pairs


@dataclass
class TextJudge:
    """Logistic regression over word and character n-gram TF-IDF, or over the embeddings of a sentence
    encoder (which must not be the pipeline's, or the judge would share the guidance's blind spots)."""

    name: str
    model: object
    held_out_accuracy: float

    @classmethod
    def train(cls, name: str, data_path: str, seed: int = 0, encoder: str | None = None) -> "TextJudge":
        """Fit on 80% of the labelled data; the held-out 20% (the same split for every judge) scores it."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split
        from sklearn.pipeline import make_pipeline, make_union
        from sklearn.preprocessing import FunctionTransformer

        texts, labels = read_labelled(data_path, "text", "label")
        x_train, x_test, y_train, y_test = train_test_split(texts, labels, test_size=0.2, random_state=seed, stratify=labels)
        if encoder is None:
            features = make_union(
                TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=3, sublinear_tf=True),
            )
        else:
            from dglm.encoder import SentenceEncoder

            sentence_encoder = SentenceEncoder(encoder)
            features = FunctionTransformer(lambda batch: sentence_encoder.encode(list(batch)).numpy())
        model = make_pipeline(features, LogisticRegression(C=4.0, max_iter=3000)).fit(x_train, y_train)
        return cls(name, model, float(model.score(x_test, y_test)))

    def predict(self, texts: list[str]) -> list[str]:
        return list(self.model.predict(texts))


def label_shares(verdicts: list[str], labels: list[str]) -> dict[str, float]:
    """The share of verdicts that are each label."""
    return {label: sum(v == label for v in verdicts) / len(verdicts) for label in labels}


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams over all n-grams of whitespace tokens (Dist-n of Li et al. 2016)."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def word_ngram_hashes(text: str, n: int) -> list[int]:
    words = re.findall(r"\w+", text.lower())
    return [hash(tuple(words[i : i + n])) for i in range(len(words) - n + 1)]


class CopyDetector:
    """Spots samples that repeat `n` words in a row from the training pairs.

    Memorised training text would flatter a judge trained on similar text (the sentiment judge's reviews
    are in the training pairs too), so the evaluation reports how often it happens.
    """

    def __init__(self, pairs_path: str, n: int = 8):
        hashes = array("q")  # 8 bytes a hash, where a list of Python ints would take ~40
        for pair in iter_pairs(pairs_path):
            hashes.extend(word_ngram_hashes(pair["prefix"] + pair["continuation"], n))
        self.known = torch.empty(0, dtype=torch.int64)  # stays empty when no pair has n words
        if hashes:  # frombuffer refuses an empty buffer
            self.known = torch.frombuffer(hashes, dtype=torch.int64).unique()
        self.n = n

    def share_copied(self, continuations: list[str]) -> float:
        """The share of continuations with at least one n-word run found in the training pairs."""
        copied = [bool(torch.isin(torch.tensor(h, dtype=torch.int64), self.known).any()) if h else False
                  for h in (word_ngram_hashes(text, self.n) for text in continuations)]
        return sum(copied) / len(copied)


class PerplexityJudge:
    """Perplexity of a continuation given its prefix under a separate causal LM."""

    def __init__(self, name: str = "gemma-3-270m", device: str = "cpu"):
        from dglm.models import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(name, device=device)
        self.name = name

    @torch.no_grad()
    def __call__(self, prefixes: list[str], continuations: list[str], batch_size: int = 25) -> list[float]:
        """Per-sample perplexity of each continuation given its prefix (NaN for an empty continuation)."""
        results = []
        for start in range(0, len(prefixes), batch_size):
            rows = list(zip(prefixes[start : start + batch_size], continuations[start : start + batch_size]))
            results += self._batch(rows)
        return results

    def _batch(self, rows: list[tuple[str, str]]) -> list[float]:
        encoded = [(self.tokenizer(p)["input_ids"], self.tokenizer(c, add_special_tokens=False)["input_ids"]) for p, c in rows]
        width = max(len(context) + len(target) for context, target in encoded)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([c + t + [pad] * (width - len(c) - len(t)) for c, t in encoded], device=self.model.device)
        mask = torch.tensor([[1] * (len(c) + len(t)) + [0] * (width - len(c) - len(t)) for c, t in encoded], device=self.model.device)
        logits = self.model(input_ids=ids, attention_mask=mask).logits
        results = []
        for row, (context, target) in enumerate(encoded):
            if not target:
                results.append(float("nan"))
                continue
            positions = torch.arange(len(context) - 1, len(context) + len(target) - 1, device=ids.device)
            nll = F.cross_entropy(logits[row, positions].float(), ids[row, positions + 1]).item()  # only the continuation's rows
            results.append(math.exp(nll))
        return results


def median(values: list[float]) -> float:
    """Median of the finite values (NaN marks an unscorable sample)."""
    ordered = sorted(v for v in values if math.isfinite(v))
    if not ordered:
        return float("nan")
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
