"""Linear attribute probes over the sentence-embedding space, stored as safetensors + a JSON card.

A probe maps a unit-length embedding to one logit per label. Binary scikit-learn models are
stored in the same two-row form ([0, w]), so softmax over the rows equals the logistic sigmoid.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dglm.attributes.cards import read_card
from dglm.attributes.noisy_probe import NoisyProbe, load_noisy_probe
from dglm.constraints import PHRASE
from dglm.errors import DglmError
from dglm.hookspecs import ENTRY_POINT_GROUP

CARD_KEYS = ("name", "labels", "encoder", "encoder_dim", "weights")
# A card's format. 1: no format_version. 2: may name a noise-conditioned classifier beside the probe
# (`"noise_conditioned": "NAME-noisy.json"`, dglm.attributes.noisy_probe).
CARD_FORMAT = 2


class Probe(nn.Module):
    """A linear classifier plus the card that says what it was trained on and how well it does."""

    def __init__(self, card: dict[str, Any], weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.card = card
        self.labels: list[str] = list(card["labels"])
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        self.noise_conditioned: NoisyProbe | None = None  # the classifier the card names beside it, if any
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)
        self.requires_grad_(False)

    @property
    def name(self) -> str:
        return self.card["name"]

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.linear(embeddings)

    def reads(self, encoder: str, dim: int) -> bool:
        """Whether this probe was trained on `encoder`'s `dim`-d embeddings (a probe reads one encoder's space)."""
        return (self.card["encoder"], self.card["encoder_dim"]) == (encoder, dim)

    def label_index(self, label: str) -> int:
        if label not in self.labels:
            raise DglmError(f"unknown label {label!r} for attribute {self.name!r}; known labels: "
                            f"{', '.join(self.labels)}")
        return self.labels.index(label)

    def save(self, directory: Path | str) -> Path:
        """Write NAME.safetensors and NAME.json into `directory`; return the card's path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = f"{self.name}.safetensors"
        save_file(
            {"weight": self.linear.weight.detach().contiguous(), "bias": self.linear.bias.detach().contiguous()},
            str(directory / weights),
        )
        card_path = directory / f"{self.name}.json"
        card_path.write_text(json.dumps({**self.card, "weights": weights}, indent=2) + "\n")
        return card_path


def load_probe(card_path: Path | str) -> Probe:
    """Load a probe from its JSON card; every way a card or its weights can be broken is reported plainly."""
    card_path = Path(card_path)
    card = read_card(card_path, "probe card")
    missing = [key for key in CARD_KEYS if key not in card] if isinstance(card, dict) else list(CARD_KEYS)
    if missing:
        raise DglmError(f"probe card {card_path} lacks the key(s) {missing}; a card needs {list(CARD_KEYS)}")
    version = card.get("format_version", 1)
    if not isinstance(version, int) or not 1 <= version <= CARD_FORMAT:
        raise DglmError(f"probe card {card_path} has format_version {version!r}; this dglm reads formats 1 to "
                        f"{CARD_FORMAT} (a newer dglm wrote it: upgrade dglm)")
    weights_path = card_path.parent / card["weights"]
    try:
        tensors = load_file(str(weights_path))
    except FileNotFoundError:
        raise DglmError(f"probe weights {weights_path} named by {card_path} do not exist") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise DglmError(f"probe weights {weights_path} are corrupt ({error})") from None
    weight, bias = tensors.get("weight"), tensors.get("bias")
    expected = (len(card["labels"]), int(card["encoder_dim"]))
    if weight is None or bias is None or tuple(weight.shape) != expected or tuple(bias.shape) != expected[:1]:
        raise DglmError(
            f"probe weights {weights_path} do not match their card: expected weight {expected} and bias "
            f"({expected[0]},), found {_shapes(tensors)}"
        )
    probe = Probe(card, weight.float(), bias.float())
    if card.get("noise_conditioned"):
        probe.noise_conditioned = load_noisy_probe(card_path.parent / str(card["noise_conditioned"]), probe.name,
                                                   probe.labels, int(card["encoder_dim"]))
    return probe


def check_probe_options(test_fraction: float, regularisation: float) -> None:
    """Refuse a held-out share outside (0, 1) and a regularisation that is not a positive finite number."""
    if not 0 < test_fraction < 1:  # also false for nan
        raise DglmError(f"test fraction must be a number between 0 and 1 (the held-out share), got {test_fraction}")
    if not 0 < regularisation < math.inf:
        raise DglmError(f"C (inverse regularisation) must be a positive finite number, got {regularisation}")


# Below this many training examples for some label, a probe is the labels' normalised centroids (a prototype probe)
# rather than a logistic regression, which few examples overfit (benchmarks/few_examples.py measured both; README,
# "Attributes from a handful of examples").
PROTOTYPE_BELOW = 20
PROTOTYPE_TEMPERATURE = 20.0  # logits are this times the cosine to each label's centroid


def train_probe(
    name: str,
    embeddings: torch.Tensor,
    labels: list[str],
    encoder: str,
    data: str,
    test_fraction: float = 0.2,
    regularisation: float = 10.0,
    seed: int = 0,
) -> Probe:
    """Fit a probe on embeddings (logistic regression, or prototypes when some label has fewer than PROTOTYPE_BELOW
    training examples), evaluate it on a held-out split, fill its card."""
    check_probe_options(test_fraction, regularisation)
    from sklearn.metrics import accuracy_score, confusion_matrix
    from sklearn.model_selection import train_test_split

    classes = sorted(set(labels))
    if len(classes) < 2:
        raise DglmError(f"training data for {name!r} has only one label ({classes}); a probe needs at least two")
    counts = {label: labels.count(label) for label in classes}
    if min(counts.values()) < 5:
        raise DglmError(f"every label needs at least 5 examples to train and evaluate {name!r}; counts: {counts}")
    x = embeddings.numpy().astype(np.float64)
    y = np.array([classes.index(label) for label in labels])
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    kind = "prototype" if np.bincount(y_train).min() < PROTOTYPE_BELOW else "logistic"
    coef, intercept = fit_prototypes(x_train, y_train) if kind == "prototype" else fit_logistic(x_train, y_train,
                                                                                                regularisation)
    predicted = (x_test @ coef.T + intercept).argmax(axis=1)
    card = {
        "name": name,
        "labels": classes,
        "encoder": encoder,
        "encoder_dim": int(x.shape[1]),
        "data": data,
        "kind": kind,
        "train_size": int(len(y_train)),
        "test_size": int(len(y_test)),
        "label_counts": counts,
        "held_out_accuracy": round(float(accuracy_score(y_test, predicted)), 4),
        "confusion_matrix": confusion_matrix(y_test, predicted, labels=range(len(classes))).tolist(),
        **({"regularisation_C": regularisation} if kind == "logistic" else {"temperature": PROTOTYPE_TEMPERATURE}),
        "weights": f"{name}.safetensors",
    }
    return Probe(card, torch.tensor(coef, dtype=torch.float32), torch.tensor(intercept, dtype=torch.float32))


def fit_logistic(x: np.ndarray, y: np.ndarray, regularisation: float) -> tuple[np.ndarray, np.ndarray]:
    """One row of weights and a bias per label, from scikit-learn's logistic regression."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=regularisation, max_iter=2000).fit(x, y)
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:  # sklearn keeps one row for binary problems: logit of class 1 vs class 0
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    return coef, intercept


def fit_prototypes(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each label's normalised centroid times PROTOTYPE_TEMPERATURE, no bias: nothing to overfit in a handful of
    examples, and still a linear probe that guidance and composition use as they use any other."""
    centroids = np.stack([x[y == label].mean(axis=0) for label in range(int(y.max()) + 1)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    return PROTOTYPE_TEMPERATURE * centroids, np.zeros(len(centroids))


def _shapes(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in tensors.items()}


def train_probe_on_texts(name: str, texts: list[str], labels: list[str], encoder, data: str, **options) -> Probe:
    """Encode texts with a SentenceEncoder and train a probe on them (see train_probe)."""
    return train_probe(name, encoder.encode(texts, progress=True), labels, encoder.name, data, **options)


def reserved_names() -> list[str]:
    """Names a new attribute may not take: those of dglm's own plugins (its entry points) and 'phrase'. An installed
    plugin of the same name would clash with the built-in one, and both would be left out."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        built_in = [point.name for point in distribution("dglm").entry_points if point.group == ENTRY_POINT_GROUP]
    except PackageNotFoundError:  # a source tree that was never installed
        built_in = []
    return sorted({*built_in, PHRASE})


def check_new_attribute_name(name: str) -> None:
    """Refuse a reserved name for a new attribute (`dglm classifier train`, `dglm plugin new`), listing them."""
    reserved = reserved_names()
    if name in reserved:
        raise DglmError(f"the attribute name {name!r} is reserved (reserved: {', '.join(reserved)}); a plugin "
                        "under it would clash with dglm's own, so choose another name")
