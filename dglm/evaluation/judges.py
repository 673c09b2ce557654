"""Independent judges of generated text: attribute classifiers and perplexity under another LM.

The judges never share anything with the guidance probes: they use different features (word and
character n-gram TF-IDF, or another sentence encoder than the pipeline's) and are trained on different
data (see `dglm data build`: the *-judge.csv files). Perplexity comes from a different, larger LM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dglm.data.labelled import read_labelled
from dglm.tensor_cache import cached_tensors, texts_digest


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
        x_train, x_test, y_train, y_test = train_test_split(texts, labels, test_size=0.2, random_state=seed,
                                                            stratify=labels)
        classifier = LogisticRegression(C=4.0, max_iter=3000)
        if encoder is None:
            features = make_union(
                TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=3, sublinear_tf=True),
            )
            model = make_pipeline(features, classifier).fit(x_train, y_train)
            return cls(name, model, float(model.score(x_test, y_test)))
        from dglm.stages.encoder import SentenceEncoder

        sentence_encoder = SentenceEncoder(encoder)
        classifier.fit(cached_embeddings(sentence_encoder, encoder, x_train), y_train)
        accuracy = classifier.score(cached_embeddings(sentence_encoder, encoder, x_test), y_test)
        features = FunctionTransformer(lambda batch: sentence_encoder.encode(list(batch)).numpy())  # stateless: no fit
        return cls(name, make_pipeline(features, classifier), float(accuracy))

    def predict(self, texts: list[str]) -> list[str]:
        return list(self.model.predict(texts))

    def probability(self, texts: list[str], label: str) -> list[float]:
        """Each text's probability of `label`."""
        column = list(self.model.classes_).index(label)
        return [float(row[column]) for row in self.model.predict_proba(texts)]


def cached_embeddings(sentence_encoder, encoder: str, texts: list[str]):
    """A judge's training or held-out texts embedded by `encoder`, kept under DGLM_CACHE (~/.cache/dglm).

    Embedding the sentiment judge's 13k texts with all-mpnet-base-v2 takes about 8 minutes on 2 CPU cores, and
    every `dglm eval` run fits its judges anew; with the cache only the first run pays.
    """
    from dglm.stages.pretrained import cache_dir

    path = cache_dir() / "judge-embeddings" / f"{texts_digest(encoder, texts)[:24]}.safetensors"
    return cached_tensors(path, lambda: {"embeddings": sentence_encoder.encode(texts)})["embeddings"].numpy()


class PerplexityJudge:
    """Perplexity of a continuation given its prefix under a separate causal LM."""

    def __init__(self, name: str = "gemma-3-270m", device: str = "cpu"):
        from dglm.stages.pretrained import load_causal_lm

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
        encoded = [(self.tokenizer(p)["input_ids"],
                    self.tokenizer(c, add_special_tokens=False)["input_ids"]) for p, c in rows]
        width = max(len(context) + len(target) for context, target in encoded)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([c + t + [pad] * (width - len(c) - len(t)) for c, t in encoded], device=self.model.device)
        mask = torch.tensor([[1] * (len(c) + len(t)) + [0] * (width - len(c) - len(t)) for c, t in encoded],
                            device=self.model.device)
        logits = self.model(input_ids=ids, attention_mask=mask).logits
        results = []
        for row, (context, target) in enumerate(encoded):
            if not target:
                results.append(float("nan"))
                continue
            positions = torch.arange(len(context) - 1, len(context) + len(target) - 1, device=ids.device)
            nll = F.cross_entropy(logits[row, positions].float(),
                                  ids[row, positions + 1]).item()  # only the continuation's rows
            results.append(math.exp(nll))
        return results
