"""Samplers: how a latent moves from one noise level to the next, given the model's clean estimate.

In the style of diffusers' schedulers, a sampler lays out the times for a number of steps
(`set_timesteps`) and makes one update (`step`) from the current noisy latent and the clean-latent
estimate x0 at that time. `diffuse` owns the loop: it asks the denoiser for v, turns it into x0, lets
the guidance nudge x0 (x0-prediction guidance needs no backward pass through the denoiser), and hands
the guided x0 to the sampler. A plugin adds a sampler through the `register_samplers` hook.

diffusers' DDIMScheduler and DPMSolverMultistepScheduler are not used: both walk a table of 1,000
discrete training timesteps built from betas, while our schedule is a continuous cosine log-SNR with a
shift and a clamp, evaluated at any t in [0, 1]. Mapping one onto the other would move every time a
little, so DDIM could no longer reproduce earlier samples exactly; the two updates below are short.
"""

from __future__ import annotations

import torch

from dglm.hookspecs import hookimpl
from dglm.interfaces import Sampler
from dglm.seeding import per_sample_randn
from dglm.stages.denoiser import Denoiser
from dglm.stages.guidance import BatchGuidance
from dglm.stages.particles import Particles


class DDIMSampler(Sampler):
    """Deterministic DDIM: keep the implied noise, move the clean estimate to the next noise level."""

    name = "ddim"

    def step(self, x0: torch.Tensor, index: int, z: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.schedule.alpha_sigma(self.timesteps[index])
        alpha_next, sigma_next = self.schedule.alpha_sigma(self.timesteps[index + 1])
        eps = (z - alpha * x0) / sigma
        return alpha_next * x0 + sigma_next * eps


class DPMSolverPlusPlus2M(Sampler):
    """DPM-Solver++ (2M), the multistep second-order solver in data (x0) prediction (Lu et al. 2022).

    Each step extrapolates the clean estimate linearly in log-SNR from this step's and the last one's, so
    it reaches a given quality in fewer steps than DDIM; the first step, with no history, is a DDIM step.
    """

    name = "dpmsolver++"

    def set_timesteps(self, steps: int) -> None:
        super().set_timesteps(steps)
        self.previous: tuple[torch.Tensor, torch.Tensor] | None = None  # (x0, half log-SNR) of the last step

    def half_logsnr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda = log(alpha / sigma), the solver's time variable."""
        return 0.5 * self.schedule.logsnr(t)

    def step(self, x0: torch.Tensor, index: int, z: torch.Tensor) -> torch.Tensor:
        t, t_next = self.timesteps[index], self.timesteps[index + 1]
        (_, sigma), (alpha_next, sigma_next) = self.schedule.alpha_sigma(t), self.schedule.alpha_sigma(t_next)
        lam, lam_next = self.half_logsnr(t), self.half_logsnr(t_next)
        h = lam_next - lam
        estimate = x0
        if self.previous is not None:
            previous_x0, previous_lam = self.previous
            r = (lam - previous_lam) / h
            estimate = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous_x0
        self.previous = (x0, lam)
        return (sigma_next / sigma) * z - alpha_next * torch.expm1(-h) * estimate


@hookimpl
def register_samplers(register) -> None:
    """The built-in samplers, registered through the `dglm` entry-point group like any plugin's."""
    for sampler in (DDIMSampler, DPMSolverPlusPlus2M):
        register(sampler)


@torch.no_grad()
def diffuse(
    denoiser: Denoiser,
    sampler: Sampler,
    prefix_latents: torch.Tensor,
    generators: list[torch.Generator],
    steps: int,
    guidance: BatchGuidance | None = None,
    prefix_guidance: float = 1.0,
    guidance_start: float = 1.0,
    particles: int = 1,
) -> torch.Tensor:
    """Clean latents (B, D), one per generator, conditioned on the prefix latents.

    Each step predicts v (self-conditioned on the last clean estimate; with `prefix_guidance` != 1,
    extrapolated away from the prediction without the prefix), turns it into x0, moves it along each row's
    guidance gradient (`BatchGuidance`) once the time t (1: pure noise, 0: clean) is at most `guidance_start`, and
    lets the sampler move to the next noise level. With `particles` above 1, each row runs that many latent
    particles, resampled by the guides' log-probability (`dglm.stages.particles`), and one is kept.
    """
    sampler.set_timesteps(steps)
    swarm = None if particles == 1 else Particles(particles, generators, guidance or BatchGuidance([], []), sampler,
                                                  steps)
    if swarm is not None:
        prefix_latents, generators, guidance = swarm.spread(prefix_latents), swarm.generators, swarm.guidance
    batch, dim = prefix_latents.shape
    device = prefix_latents.device
    schedule = sampler.schedule
    z = per_sample_randn(generators, (dim,), device=device)
    x0 = None
    for index, t in enumerate(sampler.timesteps[:-1].to(device)):
        alpha, sigma = schedule.alpha_sigma(t)
        logsnr = schedule.logsnr(t).expand(batch)
        v = denoiser(z, logsnr, prefix_latents, self_cond=x0)
        if prefix_guidance != 1.0:
            no_prefix = torch.zeros(batch, dtype=torch.bool, device=device)
            v_free = denoiser(z, logsnr, prefix_latents, self_cond=x0, prefix_mask=no_prefix)
            v = v_free + prefix_guidance * (v - v_free)
        x0 = alpha * z - sigma * v
        if guidance and float(t) <= guidance_start:
            x0 = x0 + guidance.delta(x0, float(sigma / alpha), generators, prefix_latents)
        z = sampler.step(x0, index, z)
        if swarm is not None:
            z, x0 = swarm.step(z, x0, index)
    return x0 if swarm is None else swarm.pick(x0)
