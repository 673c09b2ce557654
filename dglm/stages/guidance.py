"""Constraints turned into the classifier-guidance signal (`build_guide`), and that signal applied to a batch.

Several probe constraints (`dglm.constraints`) are composed by summing their weighted log-probabilities; a phrase
constraint is a bound on the cosine to the phrase, met after the probes' move (`PhraseBound`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dglm.attributes.noisy_probe import NOISE_KIND, NoisyProbe
from dglm.attributes.probes import Probe
from dglm.config import DiffusionSettings
from dglm.constraints import PHRASE, Constraint
from dglm.errors import DglmError
from dglm.seeding import per_sample_randn
from dglm.stages.encoder import LatentNormalizer, SentenceEncoder

GUIDANCE_MODES = {
    "gradient": "push along each target's weighted log-probability, as hard as the scale says (the reference's way)",
    "margin": "the same push, but each target stops pushing once the probe gives it GUIDANCE_TARGET",
    "project": "move the clean estimate to the nearest point where every probe gives its target GUIDANCE_TARGET "
               "(weight 2 asks twice the log-odds); the scale only switches it on",
}


def check_guidance_mode(mode: str) -> str:
    if mode not in GUIDANCE_MODES:
        raise DglmError(f"unknown guidance mode {mode!r}; modes: {', '.join(GUIDANCE_MODES)}", field="guidance_mode")
    return mode


GUIDANCE_CLASSIFIERS = ("linear", NOISE_KIND)


def check_guidance_classifier(kind: str) -> str:
    if kind not in GUIDANCE_CLASSIFIERS:
        raise DglmError(f"unknown guidance classifier {kind!r}; classifiers: {', '.join(GUIDANCE_CLASSIFIERS)}",
                        field="guidance_classifier")
    return kind


# A phrase bound never asks for a cosine this close to +-1: the proposal would be the phrase itself.
MOST_PHRASE_COSINE = 0.95


@dataclass(frozen=True)
class PhraseBound:
    """A phrase constraint as a bound on the cosine between the proposal's embedding and the phrase's unit
    embedding: at least `cosine` (towards the phrase) or at most `cosine` (away from it)."""

    embedding: torch.Tensor
    cosine: float
    at_least: bool

    @classmethod
    def from_weight(cls, embedding: torch.Tensor, weight: float, phrase_cosine: float) -> "PhraseBound":
        """Towards at weight W asks a cosine of at least W * phrase_cosine; away at weight W at most
        (1 - W) * phrase_cosine (weight 1: nothing of the phrase, orthogonal)."""
        if weight >= 0:
            return cls(embedding, min(weight * phrase_cosine, MOST_PHRASE_COSINE), True)
        return cls(embedding, max((1 + weight) * phrase_cosine, -MOST_PHRASE_COSINE), False)

    def turn(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (B, D) outside the bound, turned in the plane of each and the phrase just onto it; the
        part orthogonal to the phrase keeps its direction, so what the prefix made of the proposal stays."""
        cosine = embeddings @ self.embedding
        outside = cosine < self.cosine if self.at_least else cosine > self.cosine
        rest = embeddings - cosine[:, None] * self.embedding
        length = rest.norm(dim=-1)
        turned = self.cosine * self.embedding + math.sqrt(1 - self.cosine**2) * rest / length.clamp_min(1e-12)[:, None]
        # a proposal exactly on the phrase's axis has no plane to turn in: it is left as it is
        return torch.where((outside & (length > 1e-6))[:, None], turned, embeddings)


class Guide:
    """Moves a clean-latent estimate toward its targets, in one of three modes (`GUIDANCE_MODES`).

    For a logistic probe the gradient of log p(label | x) is (1 - p) w: at a scale of hundreds it keeps moving
    the latent long after the label is certain, towards one stock meaning for every prefix. "margin" stops each
    target's push at a probability, and "project" moves only as far as the probes need, so that what they do not
    measure stays as the prefix made it.

    In the gradient modes, following the reference, the estimate is blurred by Monte-Carlo draws
    x0 + (sigma/alpha) * xi (capped at `max_blur`), all scored in one batch, and aggregated as log-mean-exp.
    Probes are linear, so no gradient passes through the denoiser.

    Phrases are not probes but bounds on the cosine to their embedding (`PhraseBound`), met after the probes' move
    by the smallest turn of the estimate, whatever the mode: a phrase then holds beside a probe that pushes far.
    """

    def __init__(
        self,
        terms: list[tuple[Probe, int, float]],
        normalizer: LatentNormalizer,
        mc_draws: int = 16,
        max_blur: float = 1.0,
        mode: str = "gradient",
        target: float = 0.9,
        projection_passes: int = 3,
        anchor: float = 0.0,
        phrases: list[PhraseBound] | None = None,
        heads: list[NoisyProbe] | None = None,
    ):
        self.terms = terms
        self.heads = heads  # noise-conditioned classifiers, one a term, that guide in place of the probes
        self.phrases = phrases or []
        self.normalizer = normalizer
        self.mc_draws = mc_draws
        self.max_blur = max_blur
        self.mode = check_guidance_mode(mode)
        self.target = target
        self.projection_passes = projection_passes
        self.anchor = anchor

    def log_prob(self, latents: torch.Tensor) -> torch.Tensor:
        """Summed weighted log p(target | latent) over the terms, for latents of shape (..., D)."""
        return self.embedding_log_prob(self.normalizer.to_embedding(latents))

    def embedding_log_prob(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The same score for unit sentence embeddings (what the probes were trained on)."""
        total = torch.zeros(embeddings.shape[:-1], device=embeddings.device)
        for probe, label_index, weight in self.terms:
            total = total + weight * torch.log_softmax(probe(embeddings), dim=-1)[..., label_index]
        return total

    def signed_log_odds(self, latents: torch.Tensor, term: int) -> torch.Tensor:
        """log(q / (1 - q)) of one term, where q is p(label) for a positive weight and 1 - p(label) for a negative
        one."""
        probe, label_index, weight = self.terms[term]
        logits = probe(self.normalizer.to_embedding(latents))
        others = torch.cat([logits[..., :label_index], logits[..., label_index + 1 :]], dim=-1)
        log_odds = logits[..., label_index] - torch.logsumexp(others, dim=-1)
        return log_odds if weight >= 0 else -log_odds

    def satisfied_log_prob(self, latents: torch.Tensor) -> torch.Tensor:
        """Sum of |weight| * log q per term, each capped at log(target): a satisfied term pulls no more."""
        cap = math.log(self.target)
        return sum(abs(weight) * torch.nn.functional.logsigmoid(self.signed_log_odds(latents, k)).clamp_max(cap)
                   for k, (_, _, weight) in enumerate(self.terms))

    def gradient(self, x0: torch.Tensor, blur: float, generators: list[torch.Generator]) -> torch.Tensor:
        """Gradient of the (blurred) objective: the weighted log-probability, or its capped form in margin mode; with
        noise-conditioned heads, their weighted log-probability of the estimate noised to this step's level."""
        objective = self.satisfied_log_prob if self.mode == "margin" else self.log_prob
        with torch.enable_grad():
            x0 = x0.detach().requires_grad_(True)
            noise = per_sample_randn(generators, (self.mc_draws, x0.shape[-1]), device=x0.device)
            if self.heads:
                scores = self.noised_log_prob(x0, -2 * math.log(max(blur, 1e-6)), noise)
            else:
                scores = objective(x0[:, None] + min(blur, self.max_blur) * noise)  # draws (B, draws, D)
            aggregate = torch.logsumexp(scores, dim=1) - math.log(self.mc_draws)
            (grad,) = torch.autograd.grad(aggregate.sum(), x0)
        return grad

    def noised_log_prob(self, x0: torch.Tensor, logsnr: float, noise: torch.Tensor) -> torch.Tensor:
        """Summed weighted log p(target) of the heads, for each row's estimate (B, D) under each noise draw
        (B, draws, D), the estimate noised to `logsnr` (this step's: the blur is sigma / alpha)."""
        embeddings = self.normalizer.to_embedding(x0)[:, None].expand_as(noise)
        total = torch.zeros(noise.shape[:-1], device=noise.device)
        for head, (_, label_index, weight) in zip(self.heads, self.terms):
            total = total + weight * head.log_probs(embeddings, logsnr, noise)[..., label_index]
        return total

    def projection(self, x0: torch.Tensor) -> torch.Tensor:
        """The nearest point to `x0` at which every term's signed log-odds reaches |weight| * logit(target).

        Each term is a half-space for a linear probe; one step onto it is closed form, (need / |g|^2) g. The
        embedding's normalisation bends the half-space a little, and several terms must hold at once, so the steps
        cycle over the terms a few times (alternating projections)."""
        margin = math.log(self.target / (1 - self.target))
        x = x0.detach()
        for _ in range(self.projection_passes):
            for k, (_, _, weight) in enumerate(self.terms):
                with torch.enable_grad():
                    point = x.requires_grad_(True)
                    log_odds = self.signed_log_odds(point, k)
                    (grad,) = torch.autograd.grad(log_odds.sum(), point)
                need = (abs(weight) * margin - log_odds.detach()).clamp_min(0)
                x = x.detach() + (need / grad.square().sum(-1).clamp_min(1e-12))[:, None] * grad
        return x

    def anchor_gradient(self, x0: torch.Tensor, prefix_latents: torch.Tensor) -> torch.Tensor:
        """Gradient of anchor * cos(embedding of x0, the prefix's embedding): a pull back towards what the prefix is
        about, which the label's pull must outweigh (a trust region around the prefix's meaning)."""
        prefix = self.normalizer.to_embedding(prefix_latents)
        with torch.enable_grad():
            x0 = x0.detach().requires_grad_(True)
            closeness = (self.normalizer.to_embedding(x0) * prefix).sum(-1)
            (grad,) = torch.autograd.grad(self.anchor * closeness.sum(), x0)
        return grad

    def delta(self, x0: torch.Tensor, scale: float, blur: float, generators: list[torch.Generator],
              prefix_latents: torch.Tensor | None = None) -> torch.Tensor:
        """How far this guide moves each row's clean estimate at one step."""
        if self.mode == "project":
            moved = self.projection(x0)
        else:
            gradient = self.gradient(x0, blur, generators) if self.terms else torch.zeros_like(x0)
            if self.anchor and prefix_latents is not None:
                gradient = gradient + self.anchor_gradient(x0, prefix_latents)
            moved = x0 + scale * gradient
        return self.bound_phrases(moved) - x0

    def bound_phrases(self, latents: torch.Tensor) -> torch.Tensor:
        """The latents turned onto each phrase bound in turn (several phrases: a few passes over them, as `projection`
        makes over the probes, which meets bounds that can hold together nearly, not always exactly); each latent's
        length in embedding space is kept."""
        if not self.phrases:
            return latents
        raw = latents * self.normalizer.std + self.normalizer.mean
        length = raw.norm(dim=-1, keepdim=True)
        embeddings = raw / length
        for _ in range(self.projection_passes if len(self.phrases) > 1 else 1):
            for bound in self.phrases:
                embeddings = bound.turn(embeddings)
        return self.normalizer.to_latent(embeddings * length)


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

    def repeated(self, times: int) -> "BatchGuidance":
        """The same guidance for a batch in which each row is repeated `times` times in place (row r becomes rows
        r * times to r * times + times - 1: a draft's particles)."""
        repeated = BatchGuidance([], [])
        repeated.guides = self.guides
        repeated.groups = {key: [row * times + copy for row in rows for copy in range(times)]
                           for key, rows in self.groups.items()}
        return repeated

    def log_prob(self, x0: torch.Tensor) -> torch.Tensor:
        """Each row's targets' weighted log-probability under its guide (zero when unguided)."""
        total = torch.zeros(x0.shape[0], device=x0.device)
        for (guide_id, _), rows in self.groups.items():
            index = torch.tensor(rows, device=x0.device)
            total[index] = self.guides[guide_id].log_prob(x0[index])
        return total

    def delta(self, x0: torch.Tensor, blur: float, generators: list[torch.Generator],
              prefix_latents: torch.Tensor | None = None) -> torch.Tensor:
        """What each row's clean estimate moves by under its guide and scale (zero when unguided)."""
        delta = torch.zeros_like(x0)
        for (guide_id, scale), rows in self.groups.items():
            index = torch.tensor(rows, device=x0.device)
            prefixes = None if prefix_latents is None else prefix_latents[index]
            delta[index] = self.guides[guide_id].delta(x0[index], scale, blur, [generators[row] for row in rows],
                                                       prefixes)
        return delta


def build_guide(constraints: list[Constraint], terms: list[tuple[Probe, int, float]], encoder: SentenceEncoder,
                encoder_name: str, normalizer: LatentNormalizer, diffusion: DiffusionSettings) -> Guide | None:
    """The guide for `constraints` (None when there are none): `terms` are their probes with label index and weight
    (`dglm.plugins.attribute_terms`), each checked to read this encoder's space; phrases are embedded with `encoder`;
    the diffusion settings say how the guide moves the proposal."""
    if not constraints:
        return None
    device = normalizer.mean.device
    for probe, _, _ in terms:
        if not probe.reads(encoder_name, encoder.dim):
            raise DglmError(
                f"attribute {probe.name!r} was trained on encoder {probe.card['encoder']!r} "
                f"({probe.card['encoder_dim']}-d), but this pipeline uses {encoder_name!r} "
                f"({encoder.dim}-d); retrain the probe with `dglm classifier train`"
            )
    return Guide([(probe.to(device), label_index, weight) for probe, label_index, weight in terms], normalizer,
                 mc_draws=diffusion.mc_draws, mode=diffusion.guidance_mode, target=diffusion.guidance_target,
                 anchor=diffusion.guidance_anchor,
                 phrases=phrase_bounds(constraints, encoder, diffusion.phrase_cosine, device),
                 heads=noise_conditioned_heads(terms, diffusion, device))


def noise_conditioned_heads(terms: list[tuple[Probe, int, float]], diffusion: DiffusionSettings,
                            device: torch.device) -> list[NoisyProbe] | None:
    """The noise-conditioned classifiers of the terms' attributes when the settings ask for them (None otherwise);
    every attribute asked must ship one, and they guide in gradient mode only."""
    if check_guidance_classifier(diffusion.guidance_classifier) != NOISE_KIND or not terms:
        return None
    if diffusion.guidance_mode != "gradient":
        raise DglmError(f"guidance classifier {NOISE_KIND!r} guides in gradient mode only, got guidance mode "
                        f"{diffusion.guidance_mode!r}", field="guidance_classifier")
    lacking = [probe.name for probe, _, _ in terms if probe.noise_conditioned is None]
    if lacking:
        raise DglmError(f"attribute(s) {', '.join(lacking)} ship no noise-conditioned classifier; use guidance "
                        f"classifier 'linear', or train one with `dglm classifier train --kind {NOISE_KIND}`",
                        field="guidance_classifier")
    return [probe.noise_conditioned.to(device) for probe, _, _ in terms]


def phrase_bounds(constraints: list[Constraint], encoder: SentenceEncoder, phrase_cosine: float,
                  device: torch.device) -> list[PhraseBound]:
    """The phrase constraints as bounds on the cosine to each phrase's embedding (weight 0 asks nothing); a phrase
    asked both towards and away is refused, as no proposal can meet both."""
    phrases = [constraint for constraint in constraints if constraint.attribute == PHRASE and constraint.weight]
    both_ways = {c.label for c in phrases if c.weight > 0} & {c.label for c in phrases if c.weight < 0}
    if both_ways:
        raise DglmError(f"phrase {sorted(both_ways)[0]!r} is asked both towards and away; ask it one way")
    if not phrases:
        return []
    embeddings = encoder.encode([phrase.label for phrase in phrases])  # unit vectors
    return [PhraseBound.from_weight(embedding.to(device), phrase.weight, phrase_cosine)
            for embedding, phrase in zip(embeddings, phrases)]
