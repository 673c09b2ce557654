"""A Llama decoder's forward pass, written out for inference.

Importing transformers' model classes costs about two seconds of every start on a 2-core CPU (torch.distributed,
torch._dynamo, sympy; NOTEBOOK, "Start-up"), longer than writing a sample. The default decoder, SmolLM2, is a plain
Llama, so generation runs it here on torch alone: the same operations in the same order as transformers' Llama with
its SDPA attention, including which attention kernel each call takes (no mask, a mask, grouped heads packed or
repeated), so the logits are equal bit for bit (tests check it against transformers, and the golden text holds).
Training, and any decoder of another shape, loads through transformers (`pretrained.load_causal_lm`).

The module's parameter names are transformers' (`model.layers.0.self_attn.q_proj.weight`, ...), so its weights load
from the same file and a LoRA adapter merges into it unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from dglm.stages.model_folder import config_and_weight_names, load_weights

OLD_BUFFERS = "rotary_emb.inv_freq"  # older transformers saved each layer's rotary frequencies; they are recomputed


def fits(folder: Path) -> bool:
    """Whether `folder` holds a Llama this module runs exactly: one safetensors file of exactly a LlamaForCausalLM's
    weights, SiLU, no biases, default rotary positions, no sliding window."""
    read = config_and_weight_names(folder)
    if read is None:
        return False
    raw, names = read
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {"rope_type": "default"}
    if not (raw.get("model_type") == "llama" and raw.get("hidden_act", "silu") == "silu"
            and not raw.get("attention_bias") and not raw.get("mlp_bias") and raw.get("pretraining_tp", 1) == 1
            and rope.get("rope_type", rope.get("type")) == "default" and not raw.get("sliding_window")):
        return False
    try:
        config = settings(raw)
    except (KeyError, TypeError, ValueError):  # a config this cannot read: transformers' error will say what is wrong
        return False
    expected = set(LlamaDecoder(config).state_dict())
    present = {name for name in names if not name.endswith(OLD_BUFFERS)}
    if config.tie_word_embeddings:  # the head is the embedding table, saved or not
        present.add("lm_head.weight")
    return present == expected


def settings(raw: dict) -> SimpleNamespace:
    """A Llama's config.json as this module reads it, with transformers' defaults where the file is silent."""
    rope = raw.get("rope_parameters") or {}
    return SimpleNamespace(**{**raw, "rope_theta": float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))),
                              "num_key_value_heads": raw.get("num_key_value_heads", raw["num_attention_heads"]),
                              "head_dim": raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"],
                              "rms_norm_eps": raw.get("rms_norm_eps", 1e-6),
                              "tie_word_embeddings": raw.get("tie_word_embeddings", False)})


@dataclass
class KeyValueLayer:
    """One layer's keys and values, (rows, key-value heads, positions, head size)."""

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None


@dataclass
class KeyValueCache:
    """What the decoder has read, layer by layer; rows can be selected (`DecodingBatch.keep`) and joined."""

    layers: list[KeyValueLayer] = field(default_factory=list)

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Append a layer's new keys and values; return all of that layer's."""
        while len(self.layers) <= layer:
            self.layers.append(KeyValueLayer())
        held = self.layers[layer]
        held.keys = keys if held.keys is None else torch.cat([held.keys, keys], dim=-2)
        held.values = values if held.values is None else torch.cat([held.values, values], dim=-2)
        return held.keys, held.values

    def batch_select_indices(self, rows: torch.Tensor) -> None:
        for held in self.layers:
            held.keys, held.values = held.keys[rows, ...], held.values[rows, ...]

    def length(self) -> int:
        return 0 if not self.layers or self.layers[0].keys is None else self.layers[0].keys.shape[-2]


@dataclass
class Output:
    logits: torch.Tensor
    cache: KeyValueCache | None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        wide = hidden.to(torch.float32)
        wide = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * wide.to(hidden.dtype)


class Attention(nn.Module):
    def __init__(self, config: SimpleNamespace):
        super().__init__()
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, hidden: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                cache: KeyValueCache | None, layer: int) -> torch.Tensor:
        rows, length = hidden.shape[:2]
        query, key, value = (projection(hidden).view(rows, length, -1, self.head_dim).transpose(1, 2)
                             for projection in (self.q_proj, self.k_proj, self.v_proj))
        cos, sin = rotary
        query, key = query * cos + rotate_half(query) * sin, key * cos + rotate_half(key) * sin
        if cache is not None:
            key, value = cache.update(key, value, layer)
        groups, extra = self.heads // self.kv_heads, {}
        if groups > 1:  # grouped heads, each way transformers' SDPA attention takes them
            if mask is None and self.head_dim <= 256:
                extra["enable_gqa"] = True
            elif length == 1:
                query = query.reshape(rows, self.kv_heads, groups, self.head_dim)
            else:
                key, value = (t.repeat_interleave(groups, dim=1) for t in (key, value))
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0,
                                             scale=self.head_dim ** -0.5, is_causal=length > 1 and mask is None,
                                             **extra)
        out = out.reshape(out.shape[0], -1, length, self.head_dim).transpose(1, 2).contiguous()
        return self.o_proj(out.reshape(rows, length, -1).contiguous())


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class MLP(nn.Module):
    def __init__(self, config: SimpleNamespace):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(hidden)) * self.up_proj(hidden))


class Layer(nn.Module):
    def __init__(self, config: SimpleNamespace):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                cache: KeyValueCache | None, layer: int) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), rotary, mask, cache, layer)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class Body(nn.Module):
    def __init__(self, config: SimpleNamespace):
        super().__init__()
        # given its (empty) table, an Embedding skips initialising it: on the meta device that imports torch._dynamo
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         _weight=torch.empty(config.vocab_size, config.hidden_size))
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaDecoder(nn.Module):
    """A Llama causal LM, called as transformers' is by `DecodingBatch` and the baselines."""

    def __init__(self, config: SimpleNamespace, device: str = "cpu"):
        """A decoder of this shape whose weights are placeholders (on the meta device) until `from_folder` assigns
        a file's."""
        super().__init__()
        self.config = config
        with torch.device("meta"):
            self.model = Body(config)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.register_buffer("inv_freq", inverse_frequencies(config).to(device), persistent=False)

    @classmethod
    def from_folder(cls, folder: Path, device: str = "cpu") -> LlamaDecoder:
        """The folder's model (`fits` says which folders), in the number format its file holds, as transformers
        loads it."""
        config = settings(json.loads((folder / "config.json").read_text()))
        model = cls(config, device)
        state = {key: value for key, value in load_weights(folder, device).items()
                 if not key.endswith(OLD_BUFFERS)}
        if config.tie_word_embeddings:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        model.load_state_dict(state, strict=True, assign=True)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        return model.eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def new_cache(self) -> KeyValueCache:
        return KeyValueCache()

    def forward(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                cache: KeyValueCache | None = None, use_cache: bool = True, logits_to_keep: int | torch.Tensor = 0,
                output_hidden_states: bool = False) -> Output:
        hidden = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        length = hidden.shape[1]
        cache = (cache or KeyValueCache()) if use_cache else None
        past = cache.length() if cache is not None else 0
        sequences = None  # rows packed into one (training-style losses): positions restart where a row starts
        if position_ids is None:
            position_ids = torch.arange(past, past + length, device=hidden.device)[None]
        elif attention_mask is None and not past:
            starts = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1) != 1
            sequences = starts.cumsum(-1) if bool(starts.any()) else None
        rotary = self.rotary(position_ids, hidden.dtype)
        mask = attention_mask_for(attention_mask, hidden.shape[0], length, past + length, hidden.device, sequences)
        states = [hidden]
        for index, layer in enumerate(self.model.layers):
            hidden = layer(hidden, rotary, mask, cache, index)
            states.append(hidden)
        hidden = self.model.norm(hidden)
        states[-1] = hidden  # transformers reports the last layer's output normed
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return Output(self.lm_head(hidden[:, keep, :]), cache, tuple(states) if output_hidden_states else None)

    def rotary(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Each position's rotary cosines and sines, (rows, 1, positions, head size), computed in float32."""
        frequencies = position_ids[..., None].float() * self.inv_freq.to(dtype=torch.float)
        angles = torch.cat((frequencies, frequencies), dim=-1)
        return angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]


def inverse_frequencies(config: SimpleNamespace) -> torch.Tensor:
    """The rotary frequencies, computed as transformers does (in float32 on the CPU, whatever format the weights are
    held in and wherever they are)."""
    return 1.0 / (config.rope_theta ** (torch.arange(0, config.head_dim, 2, dtype=torch.float) / config.head_dim))


def attention_mask_for(padding: torch.Tensor | None, rows: int, length: int, width: int, device: torch.device,
                       sequences: torch.Tensor | None = None) -> torch.Tensor | None:
    """The causal mask over `width` keys for the last `length` of them, with padding (rows x width, 1 to attend) or
    packed sequences (rows x length, each position's sequence number); None where SDPA's own causal flag does the
    same, as transformers decides, since the kernel then differs."""
    if padding is not None:
        padding = padding[:, -width:].bool()
    if sequences is None and (length == 1 or width == length) and (padding is None or bool(padding.all())):
        return None
    causal = torch.arange(width, device=device) <= torch.arange(length, device=device)[:, None] + (width - length)
    if sequences is not None:
        return causal[None, None] & (sequences[:, :, None] == sequences[:, None, :])[:, None]
    if padding is None:
        return causal.expand(rows, 1, length, width)
    return causal[None, None] & padding[:, None, None, :]
