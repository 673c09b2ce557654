"""The noise schedule: a cosine schedule expressed through its log signal-to-noise ratio.

z_t = alpha_t * x + sigma_t * eps, with alpha_t^2 = sigmoid(logsnr(t)) and sigma_t^2 = 1 - alpha_t^2.
A positive `shift` adds signal at every t (an easier task), a negative one adds noise; the
reference shifts the log-SNR of the plain cosine schedule the same way.
"""

from __future__ import annotations

import math

import torch

LOGSNR_LIMIT = 15.0


class CosineSchedule:
    def __init__(self, shift: float = 0.0):
        self.shift = shift

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        t = t.clamp(1e-5, 1 - 1e-5)
        value = -2.0 * torch.log(torch.tan(math.pi * t / 2)) + 2.0 * self.shift
        return value.clamp(-LOGSNR_LIMIT, LOGSNR_LIMIT)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logsnr = self.logsnr(t)
        return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def noise_to_level(x: torch.Tensor, alpha2: float | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Re-noise clean latents to a given alpha^2 (the prompt generator's noise augmentation)."""
    alpha2 = torch.as_tensor(alpha2, dtype=x.dtype, device=x.device)
    if alpha2.ndim == 1:
        alpha2 = alpha2[:, None]
    return alpha2.sqrt() * x + (1 - alpha2).sqrt() * noise
