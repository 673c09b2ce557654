"""Attribute constraints and the classifier-guidance signal they produce.

A constraint names an attribute, a target label and a weight. A negative weight steers *away*
from the label. Several constraints are composed by summing their weighted log-probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Union

import torch

from dglm.attributes.probes import Probe
from dglm.errors import DglmError
from dglm.seeding import per_sample_randn
from dglm.stages.encoder import LatentNormalizer


@dataclass(frozen=True)
class Constraint:
    """A target: steer toward `label` of `attribute` with `weight` (a negative weight steers away from it).
    Checked when built, so that a bad constraint fails here, not deep inside the guidance."""

    attribute: str
    label: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("attribute", "label"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise DglmError(f"a constraint's {name} must be a non-empty string, got {value!r}")
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise DglmError(f"weight for attribute {self.attribute!r} must be a finite number, got {weight!r}")
        object.__setattr__(self, "weight", float(weight))


AttributeSpec = Union[None, str, Constraint, Mapping[str, Union[str, tuple]], Iterable[Union[str, Constraint]]]


def parse_constraint(spec: str) -> Constraint:
    """Parse ``NAME=LABEL`` or ``NAME=LABEL:WEIGHT`` (the CLI's --attr form)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise DglmError(f"attribute {spec!r} is not of the form NAME=LABEL or NAME=LABEL:WEIGHT")
    label, sep, weight_text = rest.partition(":")
    weight = 1.0
    if sep:
        try:
            weight = float(weight_text)
        except ValueError:
            raise DglmError(f"weight {weight_text!r} in {spec!r} is not a number (e.g. sentiment=positive:2.0)") from None
    return Constraint(name.strip(), label.strip(), weight)


def as_constraints(attributes: AttributeSpec) -> list[Constraint]:
    """Accept None, a dict {name: label | (label, weight)}, or a list of Constraint / 'NAME=LABEL[:W]'."""
    if attributes is None:
        return []
    if isinstance(attributes, (str, Constraint)):
        attributes = [attributes]
    if isinstance(attributes, Mapping):
        constraints = []
        for name, target in attributes.items():
            if isinstance(target, str):
                constraints.append(Constraint(name, target))
            elif isinstance(target, (tuple, list)) and len(target) == 2:
                constraints.append(Constraint(name, *target))
            else:
                raise DglmError(f"attribute {name!r} must map to a label or a (label, weight) pair, got {target!r}")
        return constraints
    if not isinstance(attributes, Iterable):
        raise DglmError(f"attributes must be a dict, a list of constraints or 'NAME=LABEL[:WEIGHT]' strings, got {attributes!r}")
    constraints = []
    for item in attributes:
        if not isinstance(item, (str, Constraint)):
            raise DglmError(f"an attribute must be a Constraint or a 'NAME=LABEL[:WEIGHT]' string, got {item!r}")
        constraints.append(item if isinstance(item, Constraint) else parse_constraint(item))
    return constraints


class Guide:
    """Gradient of the summed, weighted log-probability of the targets w.r.t. a clean-latent estimate.

    Following the reference, the estimate is blurred by Monte-Carlo draws x0 + (sigma/alpha) * xi
    (capped at `max_blur`), all scored in one batch, and aggregated as log-mean-exp. Probes are
    linear, so no gradient passes through the denoiser.
    """

    def __init__(
        self,
        terms: list[tuple[Probe, int, float]],
        normalizer: LatentNormalizer,
        mc_draws: int = 16,
        max_blur: float = 1.0,
    ):
        self.terms = terms
        self.normalizer = normalizer
        self.mc_draws = mc_draws
        self.max_blur = max_blur

    def log_prob(self, latents: torch.Tensor) -> torch.Tensor:
        """Summed weighted log p(target | latent) over the terms, for latents of shape (..., D)."""
        return self.embedding_log_prob(self.normalizer.to_embedding(latents))

    def embedding_log_prob(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The same score for unit sentence embeddings (what the probes were trained on)."""
        total = torch.zeros(embeddings.shape[:-1], device=embeddings.device)
        for probe, label_index, weight in self.terms:
            total = total + weight * torch.log_softmax(probe(embeddings), dim=-1)[..., label_index]
        return total

    def gradient(self, x0: torch.Tensor, blur: float, generators: list[torch.Generator]) -> torch.Tensor:
        with torch.enable_grad():
            x0 = x0.detach().requires_grad_(True)
            noise = per_sample_randn(generators, (self.mc_draws, x0.shape[-1]), device=x0.device)
            draws = x0[:, None] + min(blur, self.max_blur) * noise  # (B, draws, D)
            aggregate = torch.logsumexp(self.log_prob(draws), dim=1) - math.log(self.mc_draws)
            (grad,) = torch.autograd.grad(aggregate.sum(), x0)
        return grad


class BatchGuidance:
    """Guidance for one batch in which rows may ask for different attributes, weights and scales.

    Rows that share a guide and a scale are scored together; each row's gradient depends on its own latent
    and generator only, so a row is nudged exactly as it would be alone (a server batches unrelated requests).
    """

    def __init__(self, guides: list[Guide | None], scales: list[float]):
        groups: dict[tuple[int, float], list[int]] = {}
        self.guides: dict[int, Guide] = {}
        for row, (guide, scale) in enumerate(zip(guides, scales)):
            if guide is not None and scale != 0.0:
                groups.setdefault((id(guide), scale), []).append(row)
                self.guides[id(guide)] = guide
        self.groups = groups

    @classmethod
    def same(cls, guide: Guide | None, scale: float, rows: int) -> "BatchGuidance":
        """Every row guided alike."""
        return cls([guide] * rows, [scale] * rows)

    def __bool__(self) -> bool:
        return bool(self.groups)

    def delta(self, x0: torch.Tensor, blur: float, generators: list[torch.Generator]) -> torch.Tensor:
        """What each row's clean estimate moves by: its scale times its guide's gradient (zero when unguided)."""
        delta = torch.zeros_like(x0)
        for (guide_id, scale), rows in self.groups.items():
            index = torch.tensor(rows, device=x0.device)
            gradient = self.guides[guide_id].gradient(x0[index], blur, [generators[row] for row in rows])
            delta[index] = scale * gradient
        return delta
