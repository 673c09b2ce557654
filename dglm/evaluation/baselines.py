"""Baselines that the evaluation runs beside DGLM, on the same prefixes, seeds and decoder (the decoder
as published: when a checkpoint adapts the decoder for its soft prompts, the baselines do not get that).

- plain: the decoder sampled with no steering at all;
- prompting: a steering sentence placed before the prefix ("The following is a positive review.");
- activation: contrastive activation addition (CAA), a steering vector per label added to the decoder's
  residual stream at one layer (`dglm.evaluation.steering_vectors`);
- fudge: token-level plug-and-play steering with the *same* attribute probes as DGLM (FUDGE-style,
  Yang & Klein 2021): at each step the top-k next tokens are re-scored by the probes' log-probability
  of the target on the text so far plus that token.

Every method returns one continuation per (prefix, seed) row (`dglm.seeding.seeded_rows`). Plugins add
methods through the `register_methods` hook, as these do (`dglm.plugins.get_methods` lists them all); the
interface is `dglm.interfaces.Method`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from dglm.constraints import PHRASE, Constraint
from dglm.errors import DglmError
from dglm.hookspecs import hookimpl
from dglm.interfaces import Method
from dglm.pipeline import Pipeline

DEFAULT_STEERING = "The following text is {label}."


class DGLM(Method):
    name = "dglm"

    @dataclass
    class Options:
        guidance_scale: float | None = None  # None: the checkpoint's
        steps: int | None = None
        guidance_mode: str | None = None
        guidance_target: float | None = None
        guidance_anchor: float | None = None
        candidates: int | None = None
        avoid_repeats: int | None = None
        guidance_start: float | None = None
        guidance_classifier: str | None = None
        segment_tokens: int | None = None
        segment_end: str | None = None
        segment_guidance: float | None = None
        particles: int | None = None

    def continue_rows(self, rows, constraints, max_new_tokens):
        planned = list(self.pipeline.plan([prefix for prefix, _ in rows], constraints, seed=[seed for _, seed in rows],
                                          **asdict(self.options), max_new_tokens=max_new_tokens))
        return [self.pipeline.decoder.decode(ids) for ids in self.pipeline.generate_rows(planned)]


class PlainSampling(Method):
    name = "plain"

    def continue_rows(self, rows, constraints, max_new_tokens):
        return self.sample([p for p, _ in rows], rows, max_new_tokens)


class SteeringPrompt(Method):
    """Prepend one sentence per constraint, from a per-attribute template ("{label}" is filled in)."""

    name = "prompting"

    @dataclass
    class Options:
        templates: dict[str, str] = field(default_factory=dict)  # attribute -> sentence with "{label}"

    def steering(self, constraints: list[Constraint]) -> str:
        templates = self.options.templates
        sentences = []
        for c in constraints:
            label = c.label if c.weight >= 0 else f"not {c.label}"
            sentences.append(templates.get(c.attribute, DEFAULT_STEERING).format(label=label))
        return " ".join(sentences) + "\n\n" if sentences else ""

    def continue_rows(self, rows, constraints, max_new_tokens):
        lead = self.steering(constraints)
        return self.sample([lead + p for p, _ in rows], rows, max_new_tokens)


class Fudge(Method):
    """Re-rank the top-k next tokens by the probes' summed, weighted log-probability of their targets."""

    name = "fudge"

    @dataclass
    class Options:
        top_k: int = 10  # candidate tokens re-scored at each step
        strength: float = 1.0  # weight of the probes' log-probability against the decoder's logits

    def continue_rows(self, rows, constraints, max_new_tokens):
        if any(constraint.attribute == PHRASE for constraint in constraints):
            raise DglmError("FUDGE-style re-ranking scores tokens with attribute probes; a phrase is no probe, so "
                            "compare phrases with the dglm method only")
        guide = self.pipeline.make_guide(constraints)
        prefixes = [p for p, _ in rows]
        if guide is None:
            return self.sample(prefixes, rows, max_new_tokens)
        top_k, strength = self.options.top_k, self.options.strength
        decoder, encoder = self.pipeline.plain_decoder(), self.pipeline.encoder

        def adjust_logits(logits: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
            candidates = logits.topk(top_k, dim=-1).indices
            texts = [
                prefixes[row] + decoder.decode(generated[row].tolist() + [token])
                for row in range(len(rows)) for token in candidates[row].tolist()
            ]
            scores = guide.embedding_log_prob(encoder.encode(texts, batch_size=256).to(logits.device)).view(len(rows),
                                                                                                            top_k)
            adjusted = torch.full_like(logits, float("-inf"))
            return adjusted.scatter(-1, candidates, logits.gather(-1, candidates) + strength * scores)

        return self.sample(prefixes, rows, max_new_tokens, adjust_logits)


class ActivationSteering(Method):
    """Contrastive activation addition on the same decoder: the vector of each constraint's label (computed from
    that attribute's labelled texts, by default the probe's training data), times its weight, summed over the
    constraints and times `multiplier`, added after block `layer` at every position while generating."""

    name = "activation"

    @dataclass
    class Options:
        layer: int = 12  # ~40% depth of SmolLM2-135M's 30 blocks
        multiplier: float = 4.0
        texts: dict[str, str] = field(default_factory=dict)  # attribute -> labelled CSV; default data/ATTRIBUTE.csv
        per_label: int = 200  # texts a label's mean is taken over
        text_column: str = "text"
        label_column: str = "label"

    def __init__(self, pipeline: Pipeline, **options: Any):
        super().__init__(pipeline, **options)
        self.vectors: dict[str, dict[str, torch.Tensor]] = {}  # attribute -> label -> vector, computed once

    def vector_for(self, constraint: Constraint) -> torch.Tensor:
        from dglm.data.labelled import read_labelled
        from dglm.evaluation.steering_vectors import contrastive_vectors

        if constraint.attribute not in self.vectors:
            source = self.options.texts.get(constraint.attribute, f"data/{constraint.attribute}.csv")
            texts, labels = read_labelled(source, self.options.text_column, self.options.label_column)
            self.vectors[constraint.attribute] = contrastive_vectors(
                self.pipeline.plain_decoder(), texts, labels, self.options.layer, self.options.per_label)
        by_label = self.vectors[constraint.attribute]
        if constraint.label not in by_label:
            raise DglmError(f"no texts labelled {constraint.label!r} for attribute {constraint.attribute!r}; "
                            f"labels: {', '.join(by_label)}")
        return by_label[constraint.label]

    def continue_rows(self, rows, constraints, max_new_tokens):
        from dglm.evaluation.steering_vectors import steered

        prefixes = [p for p, _ in rows]
        if not constraints:
            return self.sample(prefixes, rows, max_new_tokens)
        vector = self.options.multiplier * sum(c.weight * self.vector_for(c) for c in constraints)
        with steered(self.pipeline.plain_decoder().model, self.options.layer, vector):
            return self.sample(prefixes, rows, max_new_tokens)


@hookimpl
def register_methods(register) -> None:
    """The built-in methods, registered through the `dglm` entry-point group like any plugin's."""
    for method in (DGLM, PlainSampling, SteeringPrompt, Fudge, ActivationSteering):
        register(method)
