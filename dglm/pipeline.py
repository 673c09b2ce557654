"""The pipeline: prefix -> encoder -> guided diffusion -> prompt generator -> decoder -> text.

Checkpoint folders follow the diffusers layout: `config.json` (PipelineConfig), `model.safetensors`
(denoiser, prompt generator, latent statistics and, when configured, the decoder's LoRA adapter),
`card.json` (how it was trained) and a human-readable `README.md` model card. The encoder and decoder
are named in the config, not stored: any copy of them can be used.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Unpack

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dglm.attributes.probes import Probe
from dglm.config import (SETTINGS_SECTIONS, DecodingSettings, DiffusionSettings, GenerationSettings, PipelineConfig,
                         check_setting, declared_settings)
from dglm.errors import DglmError
from dglm.inputs import check_counts, check_generation_inputs, check_prefix, check_seed, stop_strings
from dglm.plugins import get_attributes, get_sampler, why_missing
from dglm.seeding import candidate_seed, per_sample_randn, sample_generators
from dglm.stages.decoder import SoftPromptDecoder
from dglm.stages.decoder_adapter import load_adapter, split_adapter
from dglm.stages.denoiser import Denoiser
from dglm.stages.encoder import LatentNormalizer, SentenceEncoder
from dglm.stages.guidance import (PHRASE, AttributeSpec, BatchGuidance, Constraint, Guide, PhraseBound, as_constraints,
                                  check_guidance_mode)
from dglm.stages.prompt_generator import PromptGenerator
from dglm.stages.samplers import diffuse
from dglm.stages.schedule import CosineSchedule, noise_to_level

DEFAULT_CHECKPOINT = "default"
# config.json's format. 1: no format_version, one "sampling" section without a "sampler" (always DDIM).
# 2: "sampling" split into "diffusion" (with the sampler's name) and "decoding".
CHECKPOINT_FORMAT = 2
SETTINGS = declared_settings()


@dataclass
class Sample:
    """One continuation. `attributes` maps each attribute to the label asked for (the last one, when an attribute
    was given twice); `constraints` keeps every constraint as given, with its weight."""

    prefix: str
    continuation: str
    attributes: dict[str, str]
    seed: int
    constraints: list[Constraint] = field(default_factory=list)
    prefix_index: int = 0  # which prefix of the run (from 0), and which of its samples: what a resumed run checks
    sample_index: int = 0

    @property
    def text(self) -> str:
        return self.prefix + self.continuation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Row:
    """One sample to generate: its prefix, its seed, its resolved attributes and its settings. Rows with the
    same diffusion schedule (`Row.schedule_key`) can share a batch whatever their attributes, guidance scale
    and decoding settings, and each comes out as it would alone."""

    prefix: str
    seed: int
    guide: Guide | None
    diffusion: DiffusionSettings
    decoding: DecodingSettings
    logit_bias: dict[int, float] = field(default_factory=dict)  # {token id: bias}, added to the decoder's logits

    @property
    def schedule_key(self) -> tuple:
        """The diffusion settings a batch must share (the rest may differ row by row)."""
        d = self.diffusion
        return d.sampler, d.steps, d.prefix_guidance, d.renoise_alpha2, d.guidance_start


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
        return cls(config, encoder, SoftPromptDecoder.load(config.decoder, device))

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        device: str = "cpu",
        encoder: SentenceEncoder | None = None,
        decoder: SoftPromptDecoder | None = None,
        adapter_scale: float = 1.0,
        threads: int | None = None,
    ) -> "Pipeline":
        """Load a checkpoint folder (the bundled default when `path` is None).

        `threads` sets how many CPU threads torch uses, for the whole process (None: torch's default, one per core;
        on a CPU that other busy processes share, fewer can be much faster: README, "Threads").

        `adapter_scale` weakens the decoder adapter as it is merged (1: as trained, 0: the decoder as published);
        benchmarks/NOTEBOOK.md ("Where fluency is lost") measures what it trades.

        Already-loaded `encoder` / `decoder` objects may be passed to share them between pipelines; a
        checkpoint with a decoder adapter merges it into the decoder's weights, so do not share that
        decoder with code that expects the original.
        """
        if not (isinstance(adapter_scale, (int, float)) and 0 <= adapter_scale <= 1):
            raise DglmError(f"adapter scale must be a number in [0, 1], got {adapter_scale!r}")
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise DglmError(f"threads must be a positive integer (or None for torch's default), got {threads!r}",
                                field="threads")
            torch.set_num_threads(threads)
        folder = Path(path) if path is not None else default_checkpoint_path()
        config, state, card = read_checkpoint(folder)
        if encoder is None:
            encoder = SentenceEncoder(config.encoder, device=device)
        decoder = decoder or SoftPromptDecoder.load(config.decoder, device)
        check_compatible(config, encoder, decoder)
        parts, adapter = build_parts(config, state, folder)
        if adapter and not config.decoder_adapter.rank:
            raise DglmError(f"checkpoint {folder} holds decoder adapter weights, but its config.json sets no adapter rank")
        if config.decoder_adapter.rank and not adapter:
            raise DglmError(f"checkpoint {folder} declares a decoder adapter but holds none of its weights; "
                            "train it with `dglm train prompt-generator`")
        if adapter:
            load_adapter(decoder.model, config.decoder_adapter, adapter, adapter_scale)
        return cls(config, encoder, decoder, parts, card, adapter)

    def save_pretrained(self, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        return write_checkpoint(Path(path), self.config, self.parts, self.card, dtype, self.adapter)

    def plain_decoder(self) -> SoftPromptDecoder:
        """The decoder as published, without this checkpoint's adapter: what baselines sample from."""
        if not self.adapter:
            return self.decoder
        if self._plain_decoder is None:
            self._plain_decoder = SoftPromptDecoder.load(self.config.decoder, str(self.decoder.device))
        return self._plain_decoder

    # ---- attributes ---------------------------------------------------------------------
    def make_guide(self, constraints: list[Constraint], diffusion: DiffusionSettings | None = None) -> Guide | None:
        """Resolve constraints against the registered attributes and check their probes fit this encoder; the
        diffusion settings (the checkpoint's by default) say how the guide moves the proposal."""
        if not constraints:
            return None
        terms = []
        for probe, label_index, weight in attribute_terms(constraints):
            if not self.probe_fits(probe):
                raise DglmError(
                    f"attribute {probe.name!r} was trained on encoder {probe.card['encoder']!r} "
                    f"({probe.card['encoder_dim']}-d), but this pipeline uses {self.config.encoder!r} "
                    f"({self.config.latent_dim}-d); retrain the probe with `dglm classifier train`"
                )
            terms.append((probe.to(self.decoder.device), label_index, weight))
        diffusion = diffusion or self.config.diffusion
        return Guide(terms, self.parts.normalizer, mc_draws=diffusion.mc_draws, mode=diffusion.guidance_mode,
                     target=diffusion.guidance_target, anchor=diffusion.guidance_anchor,
                     phrases=self.phrase_bounds(constraints, diffusion.phrase_cosine))

    def phrase_bounds(self, constraints: list[Constraint], phrase_cosine: float) -> list[PhraseBound]:
        """The phrase constraints as bounds on the cosine to each phrase's embedding on this pipeline's encoder (weight
        0 asks nothing); a phrase asked both towards and away is refused, as no proposal can meet both."""
        phrases = [constraint for constraint in constraints if constraint.attribute == PHRASE and constraint.weight]
        both_ways = {c.label for c in phrases if c.weight > 0} & {c.label for c in phrases if c.weight < 0}
        if both_ways:
            raise DglmError(f"phrase {sorted(both_ways)[0]!r} is asked both towards and away; ask it one way")
        if not phrases:
            return []
        embeddings = self.encoder.encode([phrase.label for phrase in phrases])  # unit vectors
        return [PhraseBound.from_weight(embedding.to(self.decoder.device), phrase.weight, phrase_cosine)
                for embedding, phrase in zip(embeddings, phrases)]

    def probe_fits(self, probe) -> bool:
        """Whether a probe was trained on this pipeline's encoder (probes read one encoder's space only)."""
        return (probe.card["encoder"], probe.card["encoder_dim"]) == (self.config.encoder, self.config.latent_dim)

    def attribute_scores(self, texts: list[str]) -> list[dict[str, dict[str, float]]]:
        """Each installed attribute's label probabilities for each text, from its probe on this encoder (what an
        application filters samples by); attributes whose probe was trained on another encoder are left out."""
        usable = {name: a.probe for name, a in get_attributes().items() if self.probe_fits(a.probe)}
        embeddings = self.encoder.encode(texts).to(self.decoder.device)
        with torch.no_grad():
            probabilities = {name: torch.softmax(probe.to(self.decoder.device)(embeddings), dim=-1).tolist()
                             for name, probe in usable.items()}
        return [{name: {label: round(p, 4) for label, p in zip(usable[name].labels, rows[i])} for name, rows in probabilities.items()}
                for i in range(len(texts))]

    # ---- generation ---------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prefix: str | list[str], attributes: AttributeSpec = None, num_samples: int = 1, *,
                 seed: int | None = None, batch_size: int = 32, progress: bool = False,
                 stop: str | list[str] | None = None, **settings: Unpack[GenerationSettings]) -> list[Sample]:
        """Continue each prefix `num_samples` times so that the continuations carry `attributes`.

        `attributes` is a dict {name: label | (label, weight)} or a list of Constraint or
        "NAME=LABEL[:WEIGHT]" strings; a negative weight steers away from the label. Sample j of prefix
        i uses seed `seed + i * num_samples + j` (`seeded_rows`), stored in the result, which reproduces
        that sample alone. `settings` are the generation settings by name (`guidance_scale=64`, `min_p=0.1`, ...;
        `dglm.config.DiffusionSettings` and `DecodingSettings` declare them, with their ranges), each defaulting to
        the checkpoint's. `stop`: a string or strings; each continuation ends before the first of them it writes.
        """
        if not isinstance(prefix, (str, list, tuple)):
            raise DglmError(f"prefix must be a string or a list of strings, got {prefix!r}", field="prefix")
        prefixes = [prefix] if isinstance(prefix, str) else list(prefix)
        check_generation_inputs(prefixes, num_samples, batch_size, seed)  # all prefixes and seeds before any batch
        samples = self.generate_stream(prefixes, attributes, num_samples, seed, batch_size, stop=stop, **settings)
        from tqdm.auto import tqdm

        return list(tqdm(samples, total=len(prefixes) * num_samples, desc="generating", unit="sample", disable=not progress))

    def generate_stream(self, prefixes: Iterable[str], attributes: AttributeSpec = None, num_samples: int = 1,
                        seed: int | None = None, batch_size: int = 32, skip: int = 0, stop: str | list[str] | None = None,
                        **settings: Unpack[GenerationSettings]) -> Iterator[Sample]:
        """`generate` for inputs of any length: prefixes are read lazily and samples yielded in order, a batch at a
        time, so memory stays flat however many prefixes there are. `skip` leaves out the first samples (a
        resumed run); the others are exactly those `generate` gives for the same arguments. Every argument is
        checked at the call, each prefix (and the seed it needs) as it is read, before any model runs on it.

        Under a multi-process launch (torchrun; see the README), the batches are shared out over the processes
        and the main process yields every sample, in the same order and with the same text as one process; the
        other processes yield nothing. All processes must be given the same prefixes and arguments.
        """
        diffusion, decoding = self.settings(**settings)
        check_counts(num_samples, batch_size, seed)
        if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
            raise DglmError(f"skip must be a non-negative integer, got {skip!r}")
        stops = stop_strings(stop)
        constraints = as_constraints(attributes)
        guide = self.make_guide(constraints, diffusion)
        world, rank = process_group()
        seed = shared_seed(seed, world)
        targets = {c.attribute: c.label for c in constraints}

        def rows() -> Iterator[tuple[int, int, Row]]:
            for i, text in enumerate(prefixes):
                check_prefix(i, text)
                for j in range(num_samples):
                    k = i * num_samples + j
                    if k >= skip:
                        check_seed(seed, k + 1)
                        yield i, j, Row(text, seed + k, guide, diffusion, decoding)

        def samples() -> Iterator[Sample]:  # a generator of its own, so that the checks above run at the call
            for round_of_batches in chunks(chunks(rows(), batch_size), world):  # one batch per process a round
                mine = round_of_batches[rank] if rank < len(round_of_batches) else []
                token_ids = self.generate_rows([row for _, _, row in mine]) if mine else []
                texts = [cut_at_stop(self.decoder.decode(ids), stops) for ids in token_ids]
                ours = [Sample(row.prefix, text, targets, row.seed, constraints, i, j) for (i, j, row), text in zip(mine, texts)]
                for part in gather_to_main(ours, world, rank):
                    yield from part

        return samples()

    def settings(self, **overrides: Any) -> tuple[DiffusionSettings, DecodingSettings]:
        """The checkpoint's diffusion and decoding settings with `overrides` (None: keep) applied and validated."""
        unknown = sorted(set(overrides) - set(SETTINGS))
        if unknown:
            raise DglmError(f"unknown generation setting(s) {unknown}; settings: {', '.join(SETTINGS)}")
        sections = {section: {} for section in SETTINGS_SECTIONS}
        for name, value in overrides.items():
            sections[SETTINGS[name][0]][name] = value
        diffusion = self.config.diffusion.updated(**sections["diffusion"])
        get_sampler(diffusion.sampler)  # an unknown sampler or guidance mode fails here, before any model runs
        check_guidance_mode(diffusion.guidance_mode)
        return diffusion, self.config.decoding.updated(**sections["decoding"])

    def generate_rows(self, rows: list[Row], on_step=None) -> list[list[int]]:
        """The continuation's token ids for each row, in one batch (`generate` validates and batches for you).

        The rows must share a diffusion schedule (`Row.schedule_key`); attributes, guidance scale and decoding
        settings may differ row by row. `on_step` is passed to the decoder (streaming, see `generate_tokens`).
        """
        if len({row.schedule_key for row in rows}) > 1:
            raise DglmError("rows in one batch must share sampler, steps, prefix_guidance, renoise_alpha2 and guidance_start")
        self.check_fits(rows)  # before any model runs, and before the encoder's warning
        self.encoder.warn_if_cut([row.prefix for row in rows])
        drafts = [(row, candidate) for row in rows for candidate in range(row.diffusion.candidates)]
        if len(drafts) > len(rows) and on_step is not None:
            raise DglmError("candidates above 1 cannot be streamed token by token: the text is known once a candidate "
                            "is chosen", field="candidates")
        prefixes, diffusion = [row.prefix for row, _ in drafts], rows[0].diffusion
        generators = sample_generators([candidate_seed(row.seed, candidate) for row, candidate in drafts])
        guidance = BatchGuidance([row.guide for row, _ in drafts], [row.diffusion.guidance_scale for row, _ in drafts])
        latents = self.propose_latents(prefixes, generators, guidance, diffusion)
        soft_prompts = self.soft_prompts(latents, generators, diffusion.renoise_alpha2)
        token_ids = self.decoder.generate_tokens(prefixes, soft_prompts, generators, [row.decoding for row, _ in drafts],
                                                 on_step=on_step, logit_bias=[row.logit_bias for row, _ in drafts])
        if len(drafts) == len(rows):
            return token_ids
        chosen, start = [], 0
        for row in rows:
            count = row.diffusion.candidates
            options = token_ids[start:start + count]
            chosen.append(options[self.choose_candidate(row, [self.decoder.decode(ids) for ids in options])])
            start += count
        return chosen

    def choose_candidate(self, row: Row, texts: list[str]) -> int:
        """Which of a sample's decoded candidates to keep: of those whose every probe target the guidance probes read
        at `guidance_target` or more on the written continuation, the one whose embedding is closest to the prefix's
        (what stays on the prefix); when none is, the one whose targets' weighted log-probability is highest. Only
        what generation has is used: the guidance probes and the encoder. Phrases count towards closeness: the cosine
        to each phrase, signed by its weight, is added to the cosine to the prefix."""
        embeddings = self.encoder.encode([row.prefix, *texts]).to(self.decoder.device)
        closeness = embeddings[1:] @ embeddings[0]
        if row.guide is None:
            return int(closeness.argmax())
        for bound in row.guide.phrases:
            closeness = closeness + (embeddings[1:] @ bound.embedding) * (1 if bound.at_least else -1)
        with torch.no_grad():
            log_prob = row.guide.embedding_log_prob(embeddings[1:])
            reached = torch.ones(len(texts), dtype=torch.bool, device=embeddings.device)
            for probe, label_index, weight in row.guide.terms:
                p = torch.softmax(probe(embeddings[1:]), dim=-1)[:, label_index]
                reached &= (p if weight >= 0 else 1 - p) >= row.diffusion.guidance_target
        if bool(reached.any()):
            return int(torch.where(reached, closeness, torch.full_like(closeness, -math.inf)).argmax())
        return int(log_prob.argmax())

    def check_fits(self, rows: list[Row]) -> None:
        """Refuse rows whose prefix, soft prompts and new tokens would overrun the decoder's context, before any
        model runs (the decoder checks again as it starts, for callers that decode without diffusion)."""
        for row, prefix_ids in zip(rows, self.decoder.token_ids([row.prefix for row in rows])):
            self.decoder.check_fits(prefix_ids, self.config.prompt_generator.num_soft_prompts, row.decoding.max_new_tokens)

    def propose_latents(self, prefixes: list[str], generators: list[torch.Generator], guidance: BatchGuidance | None = None,
                        diffusion: DiffusionSettings | None = None) -> torch.Tensor:
        """The guided diffusion alone: one clean continuation latent per prefix and generator."""
        diffusion = diffusion or self.config.diffusion
        prefix_latents = self.parts.normalizer.to_latent(self.encoder.encode(prefixes).to(self.decoder.device))
        sampler = get_sampler(diffusion.sampler)(self.schedule)
        return diffuse(self.parts.denoiser, sampler, prefix_latents, generators, diffusion.steps, guidance=guidance,
                       prefix_guidance=diffusion.prefix_guidance, guidance_start=diffusion.guidance_start)

    def soft_prompts(self, latents: torch.Tensor, generators: list[torch.Generator], renoise_alpha2: float | None = None) -> torch.Tensor:
        """Re-noise latents to the level the prompt generator was trained on, then make soft prompts."""
        noise = per_sample_randn(generators, (latents.shape[-1],), device=latents.device)
        alpha2 = self.config.diffusion.renoise_alpha2 if renoise_alpha2 is None else renoise_alpha2
        return self.parts.prompt_generator(noise_to_level(latents, alpha2, noise))


def chunks(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last may be shorter), read lazily."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def process_group() -> tuple[int, int]:
    """(number of processes, this one's rank) of a multi-process launch; (1, 0) otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def shared_seed(seed: int | None, world: int) -> int:
    """The given seed, or a random one that every process of the launch agrees on."""
    if seed is not None:
        return seed
    drawn = [random.randrange(2**31)]
    if world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(drawn, src=0)
    return drawn[0]


def gather_to_main(samples: list[Sample], world: int, rank: int) -> list[list[Sample]]:
    """Every process's samples of this round, in rank order, on the main process; nothing on the others."""
    if world == 1:
        return [samples]
    import torch.distributed as dist

    parts: list[list[Sample] | None] = [None] * world if rank == 0 else None
    dist.gather_object(samples, parts, dst=0)
    return parts if rank == 0 else []


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


def first_stop(text: str, stops: list[str]) -> int | None:
    """Where the earliest stop string starts in `text`, or None."""
    found = [at for at in (text.find(stop) for stop in stops) if at >= 0]
    return min(found) if found else None


def cut_at_stop(text: str, stops: list[str]) -> str:
    """`text` up to the first stop string it holds."""
    at = first_stop(text, stops)
    return text if at is None else text[:at]


def attribute_terms(constraints: list[Constraint]) -> list[tuple[Probe, int, float]]:
    """Each constraint's probe, label index and weight from the registered attributes: an unknown attribute or label
    fails here, with what is known, before any model loads. Phrases are no probes (see `Pipeline.phrase_bounds`)."""
    attributes, terms = get_attributes(), []
    for constraint in constraints:
        if constraint.attribute == PHRASE:
            continue
        if constraint.attribute not in attributes:
            known = ", ".join(attributes) or "none (install an attribute plugin)"
            raise DglmError(f"unknown attribute {constraint.attribute!r}; known attributes: {known}{why_missing(constraint.attribute)}")
        probe = attributes[constraint.attribute].probe
        terms.append((probe, probe.label_index(constraint.label), constraint.weight))
    return terms


def check_setting_values(overrides: dict[str, Any]) -> None:
    """Check the given settings' values (None: not given) without a checkpoint: ranges, sampler and mode names."""
    for name, value in overrides.items():
        if value is not None:
            _, spec, kind = SETTINGS[name]
            check_setting(spec, kind, value)
    if overrides.get("sampler") is not None:
        get_sampler(overrides["sampler"])
    if overrides.get("guidance_mode") is not None:
        check_guidance_mode(overrides["guidance_mode"])


def write_checkpoint(folder: Path, config: PipelineConfig, parts: TrainableParts, card: dict[str, Any],
                     dtype: torch.dtype = torch.float32, adapter: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint folder; `adapter` holds the decoder adapter's weights, keyed `decoder_adapter.*`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"format_version": CHECKPOINT_FORMAT, **config.to_dict()}, indent=2) + "\n")
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
            data[section] = {name: value for name, value in sampling.items() if SETTINGS.get(name, (section,))[0] == section}
    return data


def build_parts(config: PipelineConfig, state: dict[str, torch.Tensor], folder: Path) -> tuple[TrainableParts, dict[str, torch.Tensor]]:
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
        f"- denoiser: {config.denoiser.layers} layers, width {config.denoiser.width}, {config.denoiser.num_tokens} latent tokens",
        f"- prompt generator: {config.prompt_generator.num_soft_prompts} soft prompts, {config.prompt_generator.layers} layers",
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
