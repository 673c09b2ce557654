"""The denoiser: a small non-causal transformer over a sentence latent "spliced" into tokens.

Inputs are the noisy latent z_t, a self-conditioning estimate of the clean latent (TEncDM), and
the prefix embedding (or a learned null embedding, which makes classifier-free guidance possible).
Each is cut into `num_tokens` pieces by a linear map and the pieces are concatenated per token.
Time enters every block as adaLN scale/shift/gate. The output is the v-prediction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dglm.config import DenoiserConfig


def sinusoidal_embedding(values: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=values.device) / half)
    angles = values[:, None].float() * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block whose norms are scaled, shifted and gated by the time embedding."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.modulation = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, h: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(time)[:, None].chunk(6, dim=-1)
        x = self.norm1(h) * (1 + scale1) + shift1
        batch, tokens, width = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, width)
        h = h + gate1 * self.proj(attended)
        x = self.norm2(h) * (1 + scale2) + shift2
        return h + gate2 * self.mlp(x)


class Denoiser(nn.Module):
    def __init__(self, latent_dim: int, config: DenoiserConfig):
        super().__init__()
        self.config = config
        c = config
        self.splice_latent = nn.Linear(latent_dim, c.num_tokens * c.latent_token_width)
        self.splice_self_cond = nn.Linear(latent_dim, c.num_tokens * c.latent_token_width)
        self.splice_prefix = nn.Linear(latent_dim, c.num_tokens * c.prefix_token_width)
        self.null_prefix = nn.Parameter(torch.randn(latent_dim) * 0.02)
        self.input = nn.Linear(2 * c.latent_token_width + c.prefix_token_width, c.width)
        self.position = nn.Parameter(torch.randn(c.num_tokens, c.width) * 0.02)
        self.time = nn.Sequential(nn.Linear(c.width, c.width), nn.SiLU(), nn.Linear(c.width, c.width))
        self.blocks = nn.ModuleList(AdaLNBlock(c.width, c.heads) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.width)
        self.output = nn.Linear(c.num_tokens * c.width, latent_dim)

    def forward(
        self,
        z_t: torch.Tensor,
        logsnr: torch.Tensor,
        prefix: torch.Tensor,
        self_cond: torch.Tensor | None = None,
        prefix_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict v. `prefix_mask` False replaces that row's prefix with the learned null prefix."""
        c = self.config
        batch = z_t.shape[0]
        if self_cond is None:
            self_cond = torch.zeros_like(z_t)
        if prefix_mask is not None:
            prefix = torch.where(prefix_mask[:, None], prefix, self.null_prefix.expand_as(prefix))
        tokens = torch.cat(
            [
                self.splice_latent(z_t).view(batch, c.num_tokens, c.latent_token_width),
                self.splice_self_cond(self_cond).view(batch, c.num_tokens, c.latent_token_width),
                self.splice_prefix(prefix).view(batch, c.num_tokens, c.prefix_token_width),
            ],
            dim=-1,
        )
        h = self.input(tokens) + self.position
        time = self.time(sinusoidal_embedding(logsnr, c.width))
        for block in self.blocks:
            h = block(h, time)
        return self.output(self.norm(h).flatten(1))
