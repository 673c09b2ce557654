"""Per-sample random streams: each sample owns a generator, so a sample's text depends on its
seed alone, never on which other samples share its batch."""

from __future__ import annotations

import hashlib

import torch

SAMPLE_SEEDS = 2**63  # a sample's seed is below this (dglm.inputs.MAX_SEED); a candidate's other streams are not


def sample_seed(seed: int, row: int) -> int:
    """The seed of row `row` of a request seeded `seed`, where sample j of prefix i is row i * num_samples + j.

    Every row gets its own seed: prefixes that shared seeds would share their diffusion noise, and their
    continuations would come out alike (fewer independent draws than samples)."""
    return seed + row


def seeded_rows(prefixes: list[str], num_samples: int, seed: int) -> list[tuple[str, int]]:
    """(prefix, seed) rows, `num_samples` per prefix, as `Pipeline.plan` seeds them (an evaluation's rows)."""
    return [(p, sample_seed(seed, i * num_samples + j)) for i, p in enumerate(prefixes) for j in range(num_samples)]


def sample_generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def per_sample_randn(generators: list[torch.Generator], shape: tuple[int, ...],
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """A (len(generators), *shape) standard-normal tensor, row i drawn from generator i."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


def candidate_seed(seed: int, candidate: int) -> int:
    """The seed of candidate `candidate` of the sample seeded `seed` (the `candidates` setting): candidate 0 is the
    sample's own seed, so one candidate draws exactly what a sample draws; the others are derived from the seed by
    a hash into [2**63, 2**64), where no sample's seed lies, so no other sample can draw their streams."""
    return derived_seed(seed, "candidate", candidate)


def segment_seed(seed: int, segment: int) -> int:
    """The seed of segment `segment` of the sample seeded `seed` (the `segment_tokens` setting): the first segment is
    the sample's own draw, later ones are derived from the seed as candidates are (a segment's candidates derive
    from its seed in turn), so a sample's whole text still depends on its seed alone."""
    return derived_seed(seed, "segment", segment)


def particle_seed(seed: int, particle: int) -> int:
    """The seed of latent particle `particle` of the draft seeded `seed` (the `particles` setting): particle 0 is the
    draft's own stream, the others are derived from it."""
    return derived_seed(seed, "particle", particle)


def derived_seed(seed: int, stream: str, index: int) -> int:
    """`seed` itself for index 0; otherwise a hash of (stream, index, seed) into [2**63, 2**64)."""
    if index == 0:
        return seed
    label = f"dglm {stream} {index} of seed {seed}"
    digest = hashlib.sha256(label.encode()).digest()
    return SAMPLE_SEEDS + int.from_bytes(digest[:8], "big") % SAMPLE_SEEDS
