"""The pipeline: prefix -> encoder -> guided diffusion -> prompt generator -> decoder -> text.

Checkpoint folders follow the diffusers layout: `config.json` (PipelineConfig), `model.safetensors`
(denoiser, prompt generator, latent statistics and, when configured, the decoder's LoRA adapter),
`card.json` (how it was trained) and a human-readable `README.md` model card. The encoder and decoder
are named in the config, not stored: any copy of them can be used.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dglm.adapter import load_adapter, split_adapter
from dglm.config import PipelineConfig
from dglm.decoder import SoftPromptDecoder
from dglm.denoiser import Denoiser
from dglm.encoder import LatentNormalizer, SentenceEncoder
from dglm.errors import DglmError
from dglm.guidance import AttributeSpec, Constraint, Guide, as_constraints
from dglm.models import load_causal_lm
from dglm.plugins import get_attributes
from dglm.prompt_generator import PromptGenerator
from dglm.sampler import sample_latents
from dglm.schedule import CosineSchedule, noise_to_level
from dglm.seeding import per_sample_randn, sample_generators, seeded_rows

DEFAULT_CHECKPOINT = "default"


@dataclass
class Sample:
    prefix: str
    continuation: str
    attributes: dict[str, str]
    seed: int

    @property
    def text(self) -> str:
        return self.prefix + self.continuation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrainableParts(nn.Module):
    """The parts a checkpoint stores; one module so that one state dict holds them all."""

    def __init__(self, config: PipelineConfig):
        super().__init__()
        self.denoiser = Denoiser(config.latent_dim, config.denoiser)
        self.prompt_generator = PromptGenerator(config.latent_dim, config.decoder_dim, config.prompt_generator)
        self.normalizer = LatentNormalizer(config.latent_dim)


def default_checkpoint_path() -> Path:
    return Path(str(files("dglm") / DEFAULT_CHECKPOINT))


class Pipeline:
    def __init__(
        self,
        config: PipelineConfig,
        encoder: SentenceEncoder,
        decoder: SoftPromptDecoder,
        parts: TrainableParts | None = None,
        card: dict[str, Any] | None = None,
        adapter: dict[str, torch.Tensor] | None = None,
    ):
        check_compatible(config, encoder, decoder)
        self.config = config
        self.encoder = encoder
        self.decoder = decoder
        self.parts = (parts or TrainableParts(config)).to(decoder.device).eval()
        self.schedule = CosineSchedule(config.schedule_shift)
        self.card = card or {}
        self.adapter = adapter or {}  # the decoder adapter's weights, already merged into `decoder`
        self._plain_decoder: SoftPromptDecoder | None = None

    # ---- loading and saving -------------------------------------------------------------
    @classmethod
    def from_config(cls, config: PipelineConfig, device: str = "cpu") -> "Pipeline":
        """A pipeline with freshly initialised (untrained) denoiser and prompt generator."""
        encoder = SentenceEncoder(config.encoder, device=device)
        model, tokenizer = load_causal_lm(config.decoder, device=device)
        return cls(config, encoder, SoftPromptDecoder(model, tokenizer, config.decoder))

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        device: str = "cpu",
        encoder: SentenceEncoder | None = None,
        decoder: SoftPromptDecoder | None = None,
    ) -> "Pipeline":
        """Load a checkpoint folder (the bundled default when `path` is None).

        Already-loaded `encoder` / `decoder` objects may be passed to share them between pipelines; a
        checkpoint with a decoder adapter merges it into the decoder's weights, so do not share that
        decoder with code that expects the original.
        """
        folder = Path(path) if path is not None else default_checkpoint_path()
        config, state, card = read_checkpoint(folder)
        if encoder is None:
            encoder = SentenceEncoder(config.encoder, device=device)
        if decoder is None:
            model, tokenizer = load_causal_lm(config.decoder, device=device)
            decoder = SoftPromptDecoder(model, tokenizer, config.decoder)
        check_compatible(config, encoder, decoder)
        state, adapter = split_adapter(state)
        if adapter and not config.decoder_adapter.rank:
            raise DglmError(f"checkpoint {folder} holds decoder adapter weights, but its config.json sets no adapter rank")
        if config.decoder_adapter.rank:
            if not adapter:
                raise DglmError(f"checkpoint {folder} declares a decoder adapter but holds none of its weights; "
                                "train it with `dglm train prompt-generator`")
            load_adapter(decoder.model, config.decoder_adapter, adapter)
        parts = TrainableParts(config)
        try:
            parts.load_state_dict({key: value.float() for key, value in state.items()})
        except RuntimeError as error:
            raise DglmError(f"checkpoint {folder} does not match its config.json: {str(error).splitlines()[0]}") from None
        return cls(config, encoder, decoder, parts, card, adapter)

    def save_pretrained(self, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        return write_checkpoint(Path(path), self.config, self.parts, self.card, dtype, self.adapter)

    def plain_decoder(self) -> SoftPromptDecoder:
        """The decoder as published, without this checkpoint's adapter: what baselines sample from."""
        if not self.adapter:
            return self.decoder
        if self._plain_decoder is None:
            model, tokenizer = load_causal_lm(self.config.decoder, device=str(self.decoder.device))
            self._plain_decoder = SoftPromptDecoder(model, tokenizer, self.config.decoder)
        return self._plain_decoder

    # ---- attributes ---------------------------------------------------------------------
    def make_guide(self, constraints: list[Constraint]) -> Guide | None:
        """Resolve constraints against the registered attributes and check their probes fit this encoder."""
        if not constraints:
            return None
        attributes, terms = get_attributes(), []
        for constraint in constraints:
            if constraint.attribute not in attributes:
                known = ", ".join(attributes) or "none (install an attribute plugin)"
                raise DglmError(f"unknown attribute {constraint.attribute!r}; known attributes: {known}")
            probe = attributes[constraint.attribute].probe
            if (probe.card["encoder"], probe.card["encoder_dim"]) != (self.config.encoder, self.config.latent_dim):
                raise DglmError(
                    f"attribute {probe.name!r} was trained on encoder {probe.card['encoder']!r} "
                    f"({probe.card['encoder_dim']}-d), but this pipeline uses {self.config.encoder!r} "
                    f"({self.config.latent_dim}-d); retrain the probe with `dglm classifier train`"
                )
            terms.append((probe.to(self.decoder.device), probe.label_index(constraint.label), constraint.weight))
        return Guide(terms, self.parts.normalizer, mc_draws=self.config.sampling.mc_draws)

    # ---- generation ---------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prefix: str | list[str],
        attributes: AttributeSpec = None,
        num_samples: int = 1,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        guidance_scale: float | None = None,
        steps: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        temperature: float | None = None,
        min_p: float | None = None,
        batch_size: int = 32,
        progress: bool = False,
    ) -> list[Sample]:
        """Continue each prefix `num_samples` times so that the continuations carry `attributes`.

        `attributes` is a dict {name: label | (label, weight)} or a list of Constraint or
        "NAME=LABEL[:WEIGHT]" strings; a negative weight steers away from the label. Sample j of prefix
        i uses seed `seed + i * num_samples + j` (`seeded_rows`), stored in the result, which reproduces
        that sample alone.
        """
        s = self.config.sampling
        prefixes = [prefix] if isinstance(prefix, str) else list(prefix)
        given = dict(max_new_tokens=max_new_tokens, guidance_scale=guidance_scale, steps=steps, top_p=top_p,
                     repetition_penalty=repetition_penalty, temperature=temperature, min_p=min_p)
        settings = {name: getattr(s, name) if value is None else value for name, value in given.items()}
        check_generation_inputs(prefixes, num_samples, **settings)
        constraints = as_constraints(attributes)
        guide = self.make_guide(constraints)
        seed = random.randrange(2**31) if seed is None else int(seed)
        rows = seeded_rows(prefixes, num_samples, seed)
        from tqdm.auto import tqdm

        continuations: list[str] = []
        for start in tqdm(range(0, len(rows), batch_size), desc="generating", unit="batch", disable=not progress):
            batch = rows[start : start + batch_size]
            continuations += self.generate_rows(batch, guide, **settings)
        targets = {c.attribute: c.label for c in constraints}
        return [Sample(p, text, targets, row_seed) for (p, row_seed), text in zip(rows, continuations)]

    def generate_rows(self, rows: list[tuple[str, int]], guide: Guide | None, guidance_scale: float, steps: int,
                      **decode_settings: Any) -> list[str]:
        """One continuation per (prefix, seed) row, in one batch; `generate` validates and batches for you.

        `decode_settings` are the decoder's (`SamplingConfig.decode_settings` lists them)."""
        prefixes = [p for p, _ in rows]
        generators = sample_generators([row_seed for _, row_seed in rows])
        soft_prompts = self.propose_soft_prompts(prefixes, generators, guide, guidance_scale, steps)
        return self.decoder.generate(prefixes, soft_prompts, generators, **decode_settings)

    def propose_soft_prompts(self, prefixes, generators, guide=None, guidance_scale=0.0, steps=None) -> torch.Tensor:
        """Diffuse a continuation latent for each prefix and turn it into soft prompts."""
        latents = self.propose_latents(prefixes, generators, guide, guidance_scale, steps)
        return self.soft_prompts(latents, generators)

    def propose_latents(self, prefixes, generators, guide=None, guidance_scale=0.0, steps=None) -> torch.Tensor:
        """The guided diffusion alone: one clean continuation latent per prefix and generator."""
        prefix_latents = self.parts.normalizer.to_latent(self.encoder.encode(prefixes).to(self.decoder.device))
        return sample_latents(
            self.parts.denoiser, self.schedule, prefix_latents, generators, steps or self.config.sampling.steps,
            guide=guide, guidance_scale=guidance_scale, prefix_guidance=self.config.sampling.prefix_guidance,
        )

    def soft_prompts(self, latents: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """Re-noise latents to the level the prompt generator was trained on, then make soft prompts."""
        noise = per_sample_randn(generators, (latents.shape[-1],), device=latents.device)
        return self.parts.prompt_generator(noise_to_level(latents, self.config.sampling.renoise_alpha2, noise))


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


def check_generation_inputs(prefixes: list[str], num_samples: int, max_new_tokens: int, guidance_scale: float,
                            steps: int, top_p: float, repetition_penalty: float, temperature: float, min_p: float) -> None:
    """Reject bad generation settings before any model runs."""
    if not prefixes:
        raise DglmError("no prefix given; pass a prefix string or a non-empty list of prefixes")
    for index, text in enumerate(prefixes):
        if not isinstance(text, str) or not text.strip():
            raise DglmError(f"prefix {index + 1} is empty; every prefix needs some text to continue")
    for name, value in (("num_samples", num_samples), ("max_new_tokens", max_new_tokens), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DglmError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 < top_p <= 1.0:
        raise DglmError(f"top_p must be in (0, 1], got {top_p}")
    if repetition_penalty <= 0 or temperature <= 0:
        raise DglmError(f"repetition_penalty and temperature must be positive, got {repetition_penalty} and {temperature}")
    if not 0.0 <= min_p < 1.0:
        raise DglmError(f"min_p must be in [0, 1) (0 turns it off), got {min_p}")
    if guidance_scale < 0:
        raise DglmError(f"guidance_scale must be >= 0 (steer away with a negative attribute weight), got {guidance_scale}")


def write_checkpoint(folder: Path, config: PipelineConfig, parts: TrainableParts, card: dict[str, Any],
                     dtype: torch.dtype = torch.float32, adapter: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint folder; `adapter` holds the decoder adapter's weights, keyed `decoder_adapter.*`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
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
        config = PipelineConfig.from_dict(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DglmError(f"{config_path} is not valid JSON ({error})") from None
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise DglmError(f"{weights_path} is corrupt ({error})") from None
    card_path = folder / "card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    return config, state, card


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
        f"- denoiser: {config.denoiser.layers} layers, width {config.denoiser.width}, {config.denoiser.num_tokens} latent tokens",
        f"- prompt generator: {config.prompt_generator.num_soft_prompts} soft prompts, {config.prompt_generator.layers} layers",
        f"- sampling defaults: {config.sampling.steps} DDIM steps, guidance scale {config.sampling.guidance_scale}; "
        f"decoding with top-p {config.sampling.top_p}, min-p {config.sampling.min_p}, temperature "
        f"{config.sampling.temperature}, repetition penalty {config.sampling.repetition_penalty}",
        "",
    ]
    if not card:
        lines.append("Untrained: weights are freshly initialised.")
    elif any(str(facts.get("device", "")).startswith("CPU") for facts in card.values()):
        lines += ["Trained on a CPU with a small configuration (no GPU was available): expect weaker control",
                  "and fluency than a GPU-scale run such as configs/train-gpu.yaml.", ""]
    for stage, facts in card.items():
        lines += [f"## Training: {stage.replace('_', ' ')}", ""]
        lines += [f"- {key.replace('_', ' ')}: {value}" for key, value in facts.items()] + [""]
    return "\n".join(lines).rstrip() + "\n"
