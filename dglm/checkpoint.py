"""Checkpoint folders: reading, writing, migrating and describing them.

A folder follows the diffusers layout: `config.json` (PipelineConfig), `model.safetensors` (denoiser, prompt
generator, latent statistics and, when configured, the decoder's LoRA adapter), `card.json` (how it was trained) and a
human-readable `README.md` model card. The encoder and decoder are named in the config, not stored: any copy of them
can be used. Weights are read with safetensors and the rest as JSON, never unpickled.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dglm.config import SETTINGS_SECTIONS, PipelineConfig, declared_settings
from dglm.errors import DglmError
from dglm.stages.decoder import SoftPromptDecoder
from dglm.stages.decoder_adapter import split_adapter
from dglm.stages.denoiser import Denoiser
from dglm.stages.encoder import LatentNormalizer, SentenceEncoder
from dglm.stages.prompt_generator import PromptGenerator

DEFAULT_CHECKPOINT = "default"
# config.json's format. 1: no format_version, one "sampling" section without a "sampler" (always DDIM).
# 2: "sampling" split into "diffusion" (with the sampler's name) and "decoding".
CHECKPOINT_FORMAT = 2
SETTINGS = declared_settings()


class TrainableParts(nn.Module):
    """The parts a checkpoint stores; one module so that one state dict holds them all."""

    def __init__(self, config: PipelineConfig):
        super().__init__()
        self.denoiser = Denoiser(config.latent_dim, config.denoiser)
        self.prompt_generator = PromptGenerator(config.latent_dim, config.decoder_dim, config.prompt_generator)
        self.normalizer = LatentNormalizer(config.latent_dim)


def default_checkpoint_path() -> Path:
    return Path(str(files("dglm") / DEFAULT_CHECKPOINT))


def check_compatible(config: PipelineConfig, encoder: SentenceEncoder, decoder: SoftPromptDecoder) -> None:
    """The frozen models must have the sizes the checkpoint was trained with."""
    if encoder.dim != config.latent_dim:
        raise DglmError(
            f"the checkpoint expects a {config.latent_dim}-d encoder ({config.encoder}), but encoder "
            f"{encoder.name!r} gives {encoder.dim}-d embeddings; use the encoder it was trained with"
        )
    if decoder.hidden_size != config.decoder_dim:
        raise DglmError(
            f"the checkpoint expects a decoder of width {config.decoder_dim} ({config.decoder}), but "
            f"decoder {decoder.name!r} has width {decoder.hidden_size}; use the decoder it was trained with"
        )


def write_checkpoint(folder: Path, config: PipelineConfig, parts: TrainableParts, card: dict[str, Any],
                     dtype: torch.dtype = torch.float32, adapter: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint folder; `adapter` holds the decoder adapter's weights, keyed `decoder_adapter.*`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"format_version": CHECKPOINT_FORMAT, **config.to_dict()},
                                                   indent=2) + "\n")
    tensors = {**parts.state_dict(), **(adapter or {})}
    state = {key: value.detach().to("cpu", dtype).contiguous() for key, value in tensors.items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (folder / "README.md").write_text(render_model_card(config, card))
    return folder


def read_checkpoint(folder: Path) -> tuple[PipelineConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Read and validate a checkpoint folder's config, weights and card."""
    if not folder.is_dir():
        raise DglmError(f"checkpoint folder {folder} does not exist")
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    for required in (config_path, weights_path):
        if not required.is_file():
            raise DglmError(f"checkpoint {folder} is incomplete: {required.name} is missing")
    try:
        data = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DglmError(f"{config_path} is not valid JSON ({error})") from None
    config = PipelineConfig.from_dict(migrate_config(data, config_path))
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise DglmError(f"{weights_path} is corrupt ({error})") from None
    card_path = folder / "card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    return config, state, card


def migrate_config(data: Any, where: Path) -> dict[str, Any]:
    """Bring a config.json written by an earlier dglm to the current format, so that old checkpoints load and
    sample as they did."""
    if not isinstance(data, dict):
        raise DglmError(f"{where} must hold a JSON object, got {type(data).__name__}")
    data = dict(data)
    version = data.pop("format_version", 1)
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_FORMAT:
        raise DglmError(f"{where} has format_version {version!r}; this dglm reads formats 1 to {CHECKPOINT_FORMAT} "
                        "(a newer dglm wrote it: upgrade dglm)")
    if version < 2 and isinstance(data.get("sampling"), dict):
        sampling = {"sampler": "ddim", **data.pop("sampling")}  # format 1 always sampled with DDIM
        for section in SETTINGS_SECTIONS:
            data[section] = {name: value for name, value in sampling.items() if SETTINGS.get(name,
                                                                                             (section,))[0] == section}
    return data


def build_parts(config: PipelineConfig, state: dict[str, torch.Tensor],
                folder: Path) -> tuple[TrainableParts, dict[str, torch.Tensor]]:
    """A checkpoint's trainable parts with their weights loaded, and its decoder adapter's weights (empty when it
    has none yet, as after the denoiser stage of a training run)."""
    state, adapter = split_adapter(state)
    parts = TrainableParts(config)
    try:
        parts.load_state_dict({key: value.float() for key, value in state.items()})
    except RuntimeError as error:
        raise DglmError(f"checkpoint {folder} does not match its config.json: {str(error).splitlines()[0]}") from None
    return parts, adapter


def describe_adapter(config: PipelineConfig) -> str:
    adapter = config.decoder_adapter
    if not adapter.rank:
        return ("frozen: only the soft prompts are learned, so the decoder keeps its fluency and the checkpoint "
                "holds no decoder weights")
    return (f"with a rank-{adapter.rank} LoRA adapter on {', '.join(adapter.targets)} trained jointly with the prompt "
            "generator, so that the decoder learns to follow the soft prompts (a frozen decoder barely does); the "
            "adapter is stored in the checkpoint and merged into the decoder at load time, so it costs nothing when "
            "generating")


def render_model_card(config: PipelineConfig, card: dict[str, Any]) -> str:
    lines = [
        "# dglm checkpoint",
        "",
        f"- encoder: `{config.encoder}` ({config.latent_dim}-d, frozen)",
        f"- decoder: `{config.decoder}` (width {config.decoder_dim}), {describe_adapter(config)}",
        f"- denoiser: {config.denoiser.layers} layers, width {config.denoiser.width}, "
        f"{config.denoiser.num_tokens} latent tokens",
        f"- prompt generator: {config.prompt_generator.num_soft_prompts} soft prompts, "
        f"{config.prompt_generator.layers} layers",
        f"- diffusion defaults: {config.diffusion.describe()}",
        f"- decoding defaults: {config.decoding.describe()}",
        "",
    ]
    if not card:
        lines.append("Untrained: weights are freshly initialised.")
    elif any(str(facts.get("device", "")).startswith("CPU") for facts in card.values()):
        lines += ["Trained on a CPU with a small configuration (no GPU was available): expect weaker control",
                  "and fluency than a GPU-scale run such as configs/train-gpu.yaml.", ""]
    for stage, facts in card.items():
        lines += [f"## Training: {stage.replace('_', ' ')}", ""]
        planned = facts.get("config", {}).get("steps", 0)
        if facts.get("steps", planned) < planned:  # a leg of a longer run: say so before the figures
            lines += [f"In progress: {facts['steps']} of {planned} steps; the same command continues the run.", ""]
        lines += [f"- {key.replace('_', ' ')}: {value}" for key, value in facts.items()] + [""]
    if card:
        lines += licence_lines(config, card)
    return "\n".join(lines).rstrip() + "\n"


def licence_lines(config: PipelineConfig, card: dict[str, Any]) -> list[str]:
    """The model card's licences: of the frozen models, and of every corpus the training pairs came from."""
    from dglm.data.corpus import SOURCES
    from dglm.stages.pretrained import model_licence

    lines = ["## Licences", "", f"- encoder `{config.encoder}`: {model_licence(config.encoder)}",
             f"- decoder `{config.decoder}`: {model_licence(config.decoder)}"]
    for name in sorted({source for facts in card.values() for source in facts.get("sources", {})}):
        known = SOURCES.get(name)
        lines.append(f"- training pairs from {name} (`{known.spec}`): {known.licence}" if known else
                     f"- training pairs from {name}: not a corpus of `dglm data build`; see where it came from")
    return lines + ["", "The weights are learnt from these texts: their terms apply to what you do with them.", ""]

