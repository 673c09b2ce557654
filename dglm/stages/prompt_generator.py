"""The prompt generator: a proposed sentence latent becomes k soft-prompt vectors for the decoder."""

from __future__ import annotations

import torch
from torch import nn

from dglm.config import PromptGeneratorConfig


class PromptGenerator(nn.Module):
    def __init__(self, latent_dim: int, decoder_dim: int, config: PromptGeneratorConfig):
        super().__init__()
        self.config = config
        self.expand = nn.Linear(latent_dim, config.num_soft_prompts * config.width)
        self.position = nn.Parameter(torch.randn(config.num_soft_prompts, config.width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            config.width, config.heads, 4 * config.width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.width)
        self.to_decoder = nn.Linear(config.width, decoder_dim)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """(batch, latent_dim) -> (batch, num_soft_prompts, decoder_dim)."""
        c = self.config
        h = self.expand(latent).view(latent.shape[0], c.num_soft_prompts, c.width) + self.position
        return self.to_decoder(self.norm(self.transformer(h)))
