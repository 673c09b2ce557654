"""Few-step deterministic (DDIM) sampling of sentence latents, with optional guidance.

Each step predicts v, turns it into a clean-latent estimate x0, nudges x0 along the guidance
gradient, and moves to the next noise level. Only the clean estimate is guided (x0-prediction
guidance), which needs no backward pass through the denoiser.
"""

from __future__ import annotations

import torch

from dglm.denoiser import Denoiser
from dglm.guidance import Guide
from dglm.seeding import per_sample_randn
from dglm.schedule import CosineSchedule


@torch.no_grad()
def sample_latents(
    denoiser: Denoiser,
    schedule: CosineSchedule,
    prefix_latents: torch.Tensor,
    generators: list[torch.Generator],
    steps: int,
    guide: Guide | None = None,
    guidance_scale: float = 0.0,
    prefix_guidance: float = 1.0,
) -> torch.Tensor:
    """Return clean latents (B, D), one per generator, conditioned on the prefix latents."""
    batch, dim = prefix_latents.shape
    device = prefix_latents.device
    z = per_sample_randn(generators, (dim,), device=device)
    times = torch.linspace(1.0, 0.0, steps + 1, device=device)
    x0 = None
    for t, t_next in zip(times[:-1], times[1:]):
        alpha, sigma = schedule.alpha_sigma(t)
        logsnr = schedule.logsnr(t).expand(batch)
        v = denoiser(z, logsnr, prefix_latents, self_cond=x0)
        if prefix_guidance != 1.0:
            no_prefix = torch.zeros(batch, dtype=torch.bool, device=device)
            v_free = denoiser(z, logsnr, prefix_latents, self_cond=x0, prefix_mask=no_prefix)
            v = v_free + prefix_guidance * (v - v_free)
        x0 = alpha * z - sigma * v
        if guide is not None and guidance_scale != 0.0:
            x0 = x0 + guidance_scale * guide.gradient(x0, float(sigma / alpha), generators)
        eps = (z - alpha * x0) / sigma
        alpha_next, sigma_next = schedule.alpha_sigma(t_next)
        z = alpha_next * x0 + sigma_next * eps
    return x0
