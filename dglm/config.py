"""Configuration of a pipeline: plain dataclasses that round-trip through JSON and YAML."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dglm.errors import DglmError


@dataclass
class DenoiserConfig:
    num_tokens: int = 8
    width: int = 256
    layers: int = 4
    heads: int = 4
    latent_token_width: int = 64
    prefix_token_width: int = 32


@dataclass
class PromptGeneratorConfig:
    num_soft_prompts: int = 8
    width: int = 256
    layers: int = 2
    heads: int = 4


@dataclass
class AdapterConfig:
    """LoRA on the decoder, trained with the prompt generator; rank 0 keeps the decoder frozen."""

    rank: int = 0
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class SamplingConfig:
    steps: int = 20
    guidance_scale: float = 4.0
    prefix_guidance: float = 1.0
    mc_draws: int = 16
    renoise_alpha2: float = 0.95
    top_p: float = 0.9
    temperature: float = 1.0
    repetition_penalty: float = 1.2
    min_p: float = 0.0
    max_new_tokens: int = 20

    def decode_settings(self, max_new_tokens: int) -> dict[str, Any]:
        """The decoder's share of these settings, as `SoftPromptDecoder.generate` takes them."""
        return dict(max_new_tokens=max_new_tokens, top_p=self.top_p, temperature=self.temperature,
                    repetition_penalty=self.repetition_penalty, min_p=self.min_p)


@dataclass
class PipelineConfig:
    """Everything needed to rebuild a pipeline's trainable parts and to find its frozen models."""

    encoder: str = "all-MiniLM-L6-v2"
    decoder: str = "SmolLM2-135M-Instruct"
    latent_dim: int = 384
    decoder_dim: int = 576
    schedule_shift: float = 0.0
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    prompt_generator: PromptGeneratorConfig = field(default_factory=PromptGeneratorConfig)
    decoder_adapter: AdapterConfig = field(default_factory=AdapterConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PipelineConfig":
        return build_dataclass(cls, data, "config")


def load_yaml(cls: type, path: Path | str, kind: str) -> Any:
    """Build a config dataclass from a YAML file, with clear errors for a missing or malformed file."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise DglmError(f"{kind} config {path} does not exist") from None
    except yaml.YAMLError as error:
        raise DglmError(f"{kind} config {path} is not valid YAML ({str(error).splitlines()[0]})") from None
    return build_dataclass(cls, data or {}, str(path))


def build_dataclass(cls: type, data: Any, where: str) -> Any:
    """Build a (nested) dataclass from a dict, rejecting unknown keys with a clear message."""
    if not isinstance(data, dict):
        raise DglmError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise DglmError(f"unknown key(s) {unknown} in {where}; accepted: {sorted(fields)}")
    values = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            values[name] = build_dataclass(type(default), value, f"{where}.{name}")
        else:
            values[name] = value
    return cls(**values)
