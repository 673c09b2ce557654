"""Independent measurements of generated text: attribute judges, perplexity, diversity.

The judges never share anything with the guidance probes: they use different features (word and
character n-gram TF-IDF, not the sentence encoder) and are trained on different data (see
`dglm data build`: the *-judge.csv files). Perplexity comes from a different, larger LM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dglm.errors import DglmError
from dglm.tables import read_labelled


@dataclass
class TextJudge:
    """TF-IDF + logistic regression over word and character n-grams, with its held-out accuracy."""

    name: str
    model: object
    held_out_accuracy: float

    @classmethod
    def train(cls, name: str, data_path: str, seed: int = 0) -> "TextJudge":
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split
        from sklearn.pipeline import make_pipeline, make_union

        texts, labels = read_labelled(data_path, "text", "label")
        x_train, x_test, y_train, y_test = train_test_split(texts, labels, test_size=0.2, random_state=seed, stratify=labels)
        features = make_union(
            TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=3, sublinear_tf=True),
        )
        model = make_pipeline(features, LogisticRegression(C=4.0, max_iter=3000)).fit(x_train, y_train)
        return cls(name, model, float(model.score(x_test, y_test)))

    def predict(self, texts: list[str]) -> list[str]:
        return list(self.model.predict(texts))


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams over all n-grams of whitespace tokens (Dist-n of Li et al. 2016)."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


class PerplexityJudge:
    """Perplexity of a continuation given its prefix under a separate causal LM."""

    def __init__(self, name: str = "gemma-3-270m", device: str = "cpu"):
        from dglm.models import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(name, device=device)
        self.name = name

    @torch.no_grad()
    def __call__(self, prefixes: list[str], continuations: list[str]) -> list[float]:
        results = []
        for prefix, continuation in zip(prefixes, continuations):
            context = self.tokenizer(prefix, return_tensors="pt")["input_ids"]
            target = self.tokenizer(continuation, add_special_tokens=False, return_tensors="pt")["input_ids"]
            if target.shape[1] == 0:
                raise DglmError("cannot score an empty continuation")
            ids = torch.cat([context, target], dim=1).to(self.model.device)
            logits = self.model(ids).logits[0, context.shape[1] - 1 : -1].float()
            results.append(math.exp(F.cross_entropy(logits, ids[0, context.shape[1]:]).item()))
        return results


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
