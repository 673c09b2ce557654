"""Contrastive activation addition (CAA, ActAdd): steering vectors in a decoder's residual stream.

A label's vector is the mean activation after one decoder layer over texts with that label minus the mean
over texts with the other labels; adding it, times a multiplier, at every position while generating pushes
the text toward the label. The first position is left out of the means: on SmolLM2 it carries activations
several times larger than any other position's, which would swamp the difference.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from dglm.errors import DglmError


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer blocks (Llama's `model.layers`, GPT-2's `transformer.h`, ...)."""
    count = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise DglmError(f"cannot find the {count} transformer blocks of {type(model).__name__} to steer")


def check_layer(model: nn.Module, layer: int) -> None:
    count = model.config.num_hidden_layers
    if not 0 <= layer < count:
        raise DglmError(f"layer must be in [0, {count - 1}] for this decoder ({count} layers), got {layer}")


@torch.no_grad()
def mean_activations(decoder, texts: list[str], layer: int, batch_size: int = 16) -> torch.Tensor:
    """Mean activation after block `layer` over every position but the first, over all texts."""
    check_layer(decoder.model, layer)
    total, count = None, 0
    tokenizer = decoder.tokenizer
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], add_special_tokens=False, padding=True,
                          padding_side="right",
                          truncation=True, max_length=64, return_tensors="pt").to(decoder.device)
        hidden = decoder.model(**batch, output_hidden_states=True).hidden_states[layer + 1].float()
        mask = batch["attention_mask"].clone()
        mask[:, 0] = 0  # the first position (right padding: every row's first token)
        summed = (hidden * mask[..., None]).sum(dim=(0, 1))
        total = summed if total is None else total + summed
        count += int(mask.sum())
    if not count:
        raise DglmError("no text has more than one token to take activations from")
    return total / count


def contrastive_vectors(decoder, texts: list[str], labels: list[str], layer: int, per_label: int,
                        seed: int = 0) -> dict[str, torch.Tensor]:
    """One vector per label: the mean activation on (up to `per_label` of) its texts minus that on the others'."""
    rng = random.Random(seed)
    by_label: dict[str, list[str]] = {}
    for text, label in zip(texts, labels):
        by_label.setdefault(label, []).append(text)
    if len(by_label) < 2:
        raise DglmError(f"steering vectors need texts of at least two labels, got {sorted(by_label)}")
    chosen = {label: rng.sample(group, min(per_label, len(group))) for label, group in sorted(by_label.items())}
    means = {label: mean_activations(decoder, group, layer) for label, group in chosen.items()}
    vectors = {}
    for label, mean in means.items():
        others = [means[other] for other in means if other != label]
        vectors[label] = mean - torch.stack(others).mean(0)
    return vectors


@contextmanager
def steered(model: nn.Module, layer: int, vector: torch.Tensor) -> Iterator[None]:
    """Add `vector` to the output of block `layer` at every position while the context lasts."""
    check_layer(model, layer)

    def add(module, inputs, output):
        if isinstance(output, tuple):
            return (output[0] + vector.to(output[0].dtype),) + tuple(output[1:])
        return output + vector.to(output.dtype)

    handle = decoder_layers(model)[layer].register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()
