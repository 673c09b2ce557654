"""Latent particles (the `particles` setting): sequential Monte Carlo over the diffusion's proposals.

Each draft runs P particles through the diffusion instead of one. A few times along the way the particles of a
draft are resampled by how much their clean estimate's targets' log-probability rose since the last time (the
probes' reading is the potential, as in twisted diffusion samplers, Wu et al. 2023, arXiv 2306.17775, and
Feynman-Kac steering, Singhal et al. 2025), so the draft's compute goes to the proposals that carry the asked
attributes without the guidance having to push harder. Duplicates made by resampling must then part again, so the
particles step with DDIM's stochastic update (eta 1) from their own random streams. At the end one particle a draft
is drawn by its last weight and decoded: the extra cost is in the small denoiser, not the decoder.

Particle 0 of a draft draws from the draft's own generator, the others from `seeding.particle_seed`, so a draft's
proposal still depends on its seed alone.
"""

from __future__ import annotations

import torch

from dglm.errors import DglmError
from dglm.interfaces import Sampler
from dglm.seeding import particle_seed, per_sample_randn, sample_generators
from dglm.stages.guidance import BatchGuidance

RESAMPLE_AT = (0.25, 0.5, 0.75)  # fractions of the steps after which the particles are resampled


class Particles:
    """P particles for each of a batch's drafts, laid out draft by draft (row d * P + p)."""

    def __init__(self, count: int, generators: list[torch.Generator], guidance: BatchGuidance, sampler: Sampler,
                 steps: int):
        if sampler.name != "ddim":
            raise DglmError(f"particles above 1 need the ddim sampler (their steps draw noise), got sampler "
                            f"{sampler.name!r}", field="particles")
        self.count, self.sampler = count, sampler
        self.drafts = generators  # each draft's own stream: particle 0's, and the one that resamples
        self.generators = [generator if particle == 0 else
                           sample_generators([particle_seed(generator.initial_seed(), particle)])[0]
                           for generator in generators for particle in range(count)]
        self.guidance = guidance.repeated(count)
        self.guided = {row for (guide, _), rows in guidance.groups.items() if guidance.guides[guide].terms
                       for row in rows}  # the drafts that probes weigh (a phrase alone weighs nothing)
        self.resample_after = {max(0, round(steps * fraction) - 1) for fraction in RESAMPLE_AT}
        self.potential = torch.zeros(len(self.generators))  # each particle's log-probability when last weighed

    def spread(self, prefix_latents: torch.Tensor) -> torch.Tensor:
        """The drafts' prefix latents, one for each particle."""
        return prefix_latents.repeat_interleave(self.count, dim=0)

    def step(self, z: torch.Tensor, x0: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """After the sampler's step to `z` from the clean estimates `x0`: add DDIM's noise (eta 1), and resample if
        this is one of the steps to resample after. Returns the particles' latents and estimates, reordered."""
        sampler = self.sampler
        (alpha, sigma), (alpha_next, sigma_next) = (sampler.schedule.alpha_sigma(sampler.timesteps[i])
                                                    for i in (index, index + 1))
        if float(sigma_next) > 0:
            noise_scale = sigma_next / sigma * (1 - (alpha / alpha_next) ** 2).clamp_min(0).sqrt()
            eps = (z - alpha_next * x0) / sigma_next
            fresh = per_sample_randn(self.generators, (z.shape[-1],), device=z.device)
            z = alpha_next * x0 + (sigma_next**2 - noise_scale**2).clamp_min(0).sqrt() * eps + noise_scale * fresh
        if index not in self.resample_after or not self.guided:
            return z, x0
        order = self._resample(self._potential(x0))
        return z[order.to(z.device)], x0[order.to(x0.device)]

    def pick(self, x0: torch.Tensor) -> torch.Tensor:
        """One clean latent a draft: a particle drawn by its weight since the last resampling (an unguided draft's
        first)."""
        log_weights = (self._potential(x0) - self.potential).view(-1, self.count)
        chosen = [int(torch.multinomial(torch.softmax(log_weights[draft], dim=0), 1, generator=self.drafts[draft]))
                  if draft in self.guided else 0 for draft in range(len(self.drafts))]
        return x0[torch.tensor([draft * self.count + particle for draft, particle in enumerate(chosen)],
                               device=x0.device)]

    def _potential(self, x0: torch.Tensor) -> torch.Tensor:
        """Each particle's targets' log-probability, which must be a number to weigh by."""
        potential = self.guidance.log_prob(x0).cpu()
        if not bool(torch.isfinite(potential).all()):
            raise DglmError("the attribute probes' reading of a latent particle is not a finite number; lower the "
                            "guidance scale or the attribute weights", field="particles")
        return potential

    def _resample(self, potential: torch.Tensor) -> torch.Tensor:
        """The particles' new order: within each guided draft, ancestors drawn by exp(rise of the potential) from the
        draft's own stream; an unguided draft's particles keep their places and draw nothing, so that a draft comes
        out the same batched or alone."""
        weights = (potential - self.potential).view(-1, self.count)
        kept = torch.arange(self.count)
        order = torch.cat([draft * self.count + (torch.multinomial(torch.softmax(weights[draft], dim=0), self.count,
                                                                   replacement=True, generator=self.drafts[draft])
                                                 if draft in self.guided else kept)
                           for draft in range(len(self.drafts))])
        self.potential = potential[order]
        return order
