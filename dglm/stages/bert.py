"""A BERT encoder's forward pass, written out for inference.

The default sentence encoder, all-MiniLM-L6-v2, is a BERT. Run here on torch alone, it spares every start the import
of transformers' model machinery (see `dglm.stages.llama`, which does the same for the decoder): the same operations
in the same order as transformers' BertModel with its SDPA attention, so the hidden states are equal bit for bit
(tests check it against transformers). Parameter names are transformers', so the weights load from the same file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from dglm.stages.model_folder import config_and_weight_names, load_weights

UNUSED = ("pooler.", "embeddings.position_ids")  # the pooler's weights (mean pooling ignores it), an old buffer


def fits(folder: Path) -> bool:
    """Whether `folder` holds a bare BERT encoder this module runs exactly: one safetensors file of a BertModel's
    weights, absolute positions, GELU, not a decoder."""
    read = config_and_weight_names(folder)
    if read is None:
        return False
    raw, names = read
    if not (raw.get("model_type") == "bert" and raw.get("position_embedding_type", "absolute") == "absolute"
            and raw.get("hidden_act", "gelu") == "gelu" and not raw.get("is_decoder")
            and not raw.get("add_cross_attention")):
        return False
    try:
        expected = set(BertEncoder(settings(raw)).state_dict())
    except (KeyError, TypeError, ValueError):  # a config this cannot read: transformers' error will say what is wrong
        return False
    return {name for name in names if not name.startswith(UNUSED)} == expected


def settings(raw: dict) -> SimpleNamespace:
    """A BERT's config.json as this module reads it, with transformers' defaults where the file is silent."""
    return SimpleNamespace(**{"type_vocab_size": 2, "layer_norm_eps": 1e-12, **raw})


@dataclass
class Output:
    last_hidden_state: torch.Tensor


class Embeddings(nn.Module):
    def __init__(self, config: SimpleNamespace):
        super().__init__()
        # each given its (empty) table, skipping an initialisation that on the meta device imports torch._dynamo
        self.word_embeddings, self.position_embeddings, self.token_type_embeddings = (
            nn.Embedding(count, config.hidden_size, _weight=torch.empty(count, config.hidden_size))
            for count in (config.vocab_size, config.max_position_embeddings, config.type_vocab_size))
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        embedded = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(embedded + self.position_embeddings(positions))


class SelfAttention(nn.Module):
    def __init__(self, config: SimpleNamespace):
        super().__init__()
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        rows, length = hidden.shape[:2]
        query, key, value = (projection(hidden).view(rows, length, -1, self.head_dim).transpose(1, 2)
                             for projection in (self.query, self.key, self.value))
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0,
                                             scale=self.head_dim ** -0.5, is_causal=False)
        return out.transpose(1, 2).contiguous().reshape(rows, length, -1).contiguous()


class DenseNorm(nn.Module):
    """A projection added to its residual, then normalised (BERT's `BertSelfOutput` and `BertOutput`)."""

    def __init__(self, inputs: int, config: SimpleNamespace):
        super().__init__()
        self.dense = nn.Linear(inputs, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden) + residual)


class AttentionBlock(nn.Module):
    def __init__(self, config: SimpleNamespace):
        super().__init__()
        self.self = SelfAttention(config)
        self.output = DenseNorm(config.hidden_size, config)


class Intermediate(nn.Module):
    def __init__(self, config: SimpleNamespace):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)


class Layer(nn.Module):
    def __init__(self, config: SimpleNamespace):
        super().__init__()
        self.attention = AttentionBlock(config)
        self.intermediate = Intermediate(config)
        self.output = DenseNorm(config.intermediate_size, config)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        attended = self.attention.output(self.attention.self(hidden, mask), hidden)
        return self.output(F.gelu(self.intermediate.dense(attended)), attended)


class Stack(nn.Module):
    def __init__(self, config: SimpleNamespace):
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))


class BertEncoder(nn.Module):
    """A BERT's last hidden states, called as transformers' BertModel is by `PooledEncoder`."""

    def __init__(self, config: SimpleNamespace):
        """An encoder of this shape whose weights are placeholders (on the meta device) until `from_folder` assigns
        a file's."""
        super().__init__()
        self.config = config
        with torch.device("meta"):
            self.embeddings = Embeddings(config)
            self.encoder = Stack(config)

    @classmethod
    def from_folder(cls, folder: Path, device: str = "cpu") -> BertEncoder:
        """The folder's encoder (`fits` says which folders), in the number format its file holds, as transformers
        loads it."""
        model = cls(settings(json.loads((folder / "config.json").read_text())))
        state = load_weights(folder, device)
        model.load_state_dict({key: value for key, value in state.items() if not key.startswith(UNUSED)},
                              strict=True, assign=True)
        return model.eval().requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> Output:
        hidden = self.embeddings(input_ids, torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids)
        mask = None
        if attention_mask is not None and not bool(attention_mask.bool().all()):  # as transformers: no mask, no padding
            mask = attention_mask.bool()[:, None, None, :].expand(input_ids.shape[0], 1, input_ids.shape[1], -1)
        for layer in self.encoder.layer:
            hidden = layer(hidden, mask)
        return Output(hidden)
