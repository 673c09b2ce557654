"""Noise-conditioned attribute classifiers: a small MLP read on a noised sentence embedding, its layers modulated by
the noise level (FiLM), as DGLM's successor STAR-LDM guides (Lovelace et al. 2025).

A linear probe's gradient is one direction for every latent, so strong guidance pushes every prefix's proposal the
same way. This classifier's gradient depends on where the latent is, and it is trained on embeddings noised as the
diffusion noises them, so at each step it answers for the noise the latent still has instead of for a clean text.

It lives beside an attribute's linear probe (which still scores written text and chooses among candidates): the
linear card names it (`"noise_conditioned": "NAME-noisy.json"`), and the `guidance_classifier` setting picks which
one guides. Its own card and safetensors follow the linear probe's format, with `"kind": "noise-conditioned"`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dglm.attributes.cards import read_card
from dglm.errors import DglmError

NOISE_KIND = "noise-conditioned"
FREQUENCIES = 16  # sinusoidal features of the log signal-to-noise ratio
CLEAN_LOGSNR = 15.0  # the schedule's limit: as good as no noise


class FiLMBlock(nn.Module):
    """A residual MLP block whose normalised input is scaled and shifted by the noise level's embedding; the last
    layer starts at zero, so that each block starts as the identity."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(width, 2 * width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, width))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, hidden: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(noise_level).chunk(2, dim=-1)
        return hidden + self.mlp(self.norm(hidden) * (1 + scale) + shift)


class NoisyProbe(nn.Module):
    """log p(label | a unit embedding noised to a log-SNR): the embedding is standardised per dimension (`mean`,
    `std` of the training embeddings), noised as z = alpha * u + sigma * noise, and classified by FiLM blocks."""

    def __init__(self, card: dict[str, Any]):
        super().__init__()
        self.card = card
        self.labels: list[str] = list(card["labels"])
        dim, width, layers = int(card["encoder_dim"]), int(card["width"]), int(card["layers"])
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.input = nn.Linear(dim, width)
        self.noise_level = nn.Sequential(nn.Linear(2 * FREQUENCIES, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(FiLMBlock(width) for _ in range(layers))
        self.output = nn.Linear(width, len(self.labels))

    @property
    def name(self) -> str:
        return self.card["name"]

    def log_probs(self, embeddings: torch.Tensor, logsnr: torch.Tensor | float, noise: torch.Tensor) -> torch.Tensor:
        """(..., labels) log-probabilities of unit `embeddings` (..., D) noised with `noise` (same shape) to `logsnr`
        (a number, or one per row)."""
        logsnr = torch.as_tensor(logsnr, dtype=embeddings.dtype, device=embeddings.device).expand(embeddings.shape[:-1])
        alpha, sigma = torch.sigmoid(logsnr).sqrt()[..., None], torch.sigmoid(-logsnr).sqrt()[..., None]
        noised = alpha * (embeddings - self.mean) / self.std + sigma * noise
        frequencies = torch.arange(FREQUENCIES, device=logsnr.device, dtype=logsnr.dtype)
        angles = logsnr[..., None] / CLEAN_LOGSNR * math.pi * 2.0 ** (frequencies / 4)
        level = self.noise_level(torch.cat([angles.sin(), angles.cos()], dim=-1))
        hidden = self.input(noised)
        for block in self.blocks:
            hidden = block(hidden, level)
        return torch.log_softmax(self.output(hidden), dim=-1)

    def save(self, directory: Path | str) -> Path:
        """Write NAME-noisy.safetensors (in half precision: a plugin ships it) and NAME-noisy.json into `directory`;
        return the card's path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        stem = f"{self.name}-noisy"
        save_file({key: value.detach().half().contiguous() for key, value in self.state_dict().items()},
                  str(directory / f"{stem}.safetensors"))
        card_path = directory / f"{stem}.json"
        card_path.write_text(json.dumps({**self.card, "weights": f"{stem}.safetensors"}, indent=2) + "\n")
        return card_path


def load_noisy_probe(card_path: Path, name: str, labels: list[str], encoder_dim: int) -> NoisyProbe:
    """The noise-conditioned classifier a linear card names; it must classify the same labels in the same space."""
    card = read_card(card_path, f"noise-conditioned classifier card (named by {name!r}'s card)")
    if not isinstance(card, dict) or card.get("kind") != NOISE_KIND:
        raise DglmError(f"{card_path} is not a noise-conditioned classifier's card (its kind must be {NOISE_KIND!r})")
    wanted = {"labels": labels, "encoder_dim": encoder_dim}
    if any(card.get(key) != value for key, value in wanted.items()):
        raise DglmError(f"{card_path} classifies {card.get('labels')} in {card.get('encoder_dim')}-d, but {name!r} has "
                        f"labels {labels} in {encoder_dim}-d; train it again on the same data")
    weights_path = card_path.parent / str(card.get("weights"))
    try:
        probe = NoisyProbe({**card, "name": name})
        probe.load_state_dict({key: value.float() for key, value in load_file(str(weights_path)).items()})
    except FileNotFoundError:
        raise DglmError(f"weights {weights_path} named by {card_path} do not exist") from None
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as error:
        why = str(error).splitlines()[0]
        raise DglmError(f"weights {weights_path} do not fit their card {card_path} ({why})") from None
    return probe.requires_grad_(False).eval()


def train_noisy_probe(name: str, embeddings: torch.Tensor, labels: list[str], encoder: str, data: str,
                      logsnr_of: Callable[[torch.Tensor], torch.Tensor], *, test_fraction: float = 0.2,
                      steps: int = 3000, batch_size: int = 256, width: int = 128, layers: int = 3,
                      seed: int = 0) -> NoisyProbe:
    """Fit a noise-conditioned classifier: each batch's embeddings are noised to log-SNRs drawn as the diffusion
    draws its times (`logsnr_of` maps uniform times to log-SNRs), and the card records held-out accuracy at
    several noise levels."""
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise DglmError(f"training data for {name!r} has only one label ({classes}); a classifier needs at least two")
    generator = torch.Generator().manual_seed(seed)
    targets = torch.tensor([classes.index(label) for label in labels])
    order = torch.randperm(len(targets), generator=generator)
    held_out = max(1, int(len(targets) * test_fraction))
    test, train = order[:held_out], order[held_out:]
    card = {"name": name, "kind": NOISE_KIND, "format_version": 1, "labels": classes, "encoder": encoder,
            "encoder_dim": int(embeddings.shape[1]), "data": data, "width": width, "layers": layers, "steps": steps,
            "batch_size": batch_size, "train_size": len(train), "test_size": len(test)}
    probe = NoisyProbe(card)
    probe.mean.copy_(embeddings[train].mean(0))
    probe.std.copy_(embeddings[train].std(0).clamp_min(1e-6))
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    probe.train()
    for _ in range(steps):
        batch = train[torch.randint(len(train), (batch_size,), generator=generator)]
        logsnr = logsnr_of(torch.rand(batch_size, generator=generator))
        noise = torch.randn(batch_size, embeddings.shape[1], generator=generator)
        loss = F.nll_loss(probe.log_probs(embeddings[batch], logsnr, noise), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    probe.eval()
    with torch.no_grad():
        accuracy = {}
        for level in (-4.0, 0.0, 4.0, CLEAN_LOGSNR):
            noise = torch.randn(len(test), embeddings.shape[1], generator=generator)
            predicted = probe.log_probs(embeddings[test], level, noise).argmax(-1)
            accuracy[f"logsnr {level:g}"] = round(float((predicted == targets[test]).float().mean()), 4)
    probe.card["held_out_accuracy_by_noise"] = accuracy
    return probe.requires_grad_(False)
