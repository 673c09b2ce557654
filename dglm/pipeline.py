"""The pipeline: prefix -> encoder -> guided diffusion -> prompt generator -> decoder -> text.

`Pipeline.plan` turns a request (prefixes, attributes, a count, a seed, settings) into rows, each one sample with its
seed; `Pipeline.generate_rows` writes a batch of rows. Every way in (`generate`, the CLI, the server, the evaluation's
DGLM method) plans through `plan`, so a sample's seed and checks are the same whichever way it was asked for.
Checkpoint folders are read and written by `dglm.checkpoint`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Unpack

import torch

from dglm.checkpoint import (TrainableParts, build_parts, check_compatible, default_checkpoint_path, read_checkpoint,
                             write_checkpoint)
from dglm.config import SETTINGS_SECTIONS, DecodingSettings, DiffusionSettings, GenerationSettings, PipelineConfig
from dglm.constraints import AttributeSpec, Constraint, as_constraints
from dglm.endings import whole_sentences
from dglm.errors import DglmError
from dglm.inputs import (check_counts, check_device, check_generation_inputs, check_prefix, check_seed, cut_at_stop,
                         stop_strings)
from dglm.plugins import attribute_terms, get_attributes, get_sampler
from dglm.processes import chunks, gather_to_main, process_group, shared_seed
from dglm.repeats import without_new_repeats
from dglm.request_checks import SETTINGS, check_request, check_setting_values
from dglm.seeding import candidate_seed, per_sample_randn, sample_generators, sample_seed
from dglm.segments import write_in_segments, written_in_segments
from dglm.stages.decoder import SoftPromptDecoder
from dglm.stages.decoder_adapter import load_adapter
from dglm.stages.encoder import SentenceEncoder
from dglm.stages.guidance import BatchGuidance, Guide, build_guide
from dglm.stages.precision import decoder_dtype, hold_in
from dglm.stages.samplers import diffuse
from dglm.stages.sampling import Continued, DecodingBatch, ReadContext
from dglm.stages.schedule import CosineSchedule, noise_to_level

SCHEDULE_SETTINGS = ("sampler", "steps", "prefix_guidance", "renoise_alpha2", "guidance_start", "segment_tokens",
                     "particles")  # the diffusion settings a batch's rows must share (`Row.schedule_key`)


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
    """One sample to generate, as `Pipeline.plan` makes it: its prefix, its seed, its resolved attributes and its
    settings. Rows with the same diffusion schedule (`Row.schedule_key`) can share a batch whatever their attributes,
    guidance scale and decoding settings, and each comes out as it would alone."""

    prefix: str
    seed: int
    guide: Guide | None
    diffusion: DiffusionSettings
    decoding: DecodingSettings
    logit_bias: dict[int, float] = field(default_factory=dict)  # {token id: bias}, added to the decoder's logits
    prefix_index: int = 0  # which prefix of its request (from 0)
    sample_index: int = 0  # which of that prefix's samples

    @property
    def schedule_key(self) -> tuple:
        return tuple(getattr(self.diffusion, name) for name in SCHEDULE_SETTINGS)


@dataclass
class Writing:
    """Rows planned and read by the decoder, ready to be decoded (`Pipeline.start_writing`): which row and candidate
    each of the batch's rows is (`drafts`), and the embedding of each row's context (`read`, what choosing compares
    candidates with)."""

    drafts: list[tuple[int, int]]
    read: torch.Tensor
    batch: DecodingBatch


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
    def from_pretrained(cls, path: str | Path | None = None, device: str = "cpu",
                        encoder: SentenceEncoder | None = None, decoder: SoftPromptDecoder | None = None,
                        adapter_scale: float = 1.0, threads: int | None = None, dtype: str = "float32") -> "Pipeline":
        """Load a checkpoint folder (the bundled default when `path` is None).

        `threads` sets how many CPU threads torch uses, for the whole process (None: torch's default, one per core;
        on a CPU that other busy processes share, fewer can be much faster: README, "Threads").

        `dtype` is the number format of the decoder this call loads: "float32", or "bfloat16", about 1.7x as fast a
        token on a CPU with AVX-512 BF16 but with a sample's text depending on the samples batched with it
        (`dglm.stages.precision`). The same seed gives other text in another format. A `decoder` passed in keeps its
        own.

        `adapter_scale` weakens the decoder adapter as it is merged (1: as trained, 0: the decoder as published);
        benchmarks/NOTEBOOK.md ("Where fluency is lost") measures what it trades.

        Already-loaded `encoder` / `decoder` objects may be passed to share them between pipelines; a checkpoint with
        a decoder adapter merges it into the decoder's weights, so do not share that decoder with code that expects
        the original.
        """
        if not (isinstance(adapter_scale, (int, float)) and 0 <= adapter_scale <= 1):
            raise DglmError(f"adapter scale must be a number in [0, 1], got {adapter_scale!r}")
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise DglmError(f"threads must be a positive integer (or None for torch's default), got {threads!r}",
                                field="threads")
            torch.set_num_threads(threads)
        check_device(device)
        number_format = decoder_dtype(dtype, device)
        folder = Path(path) if path is not None else default_checkpoint_path()
        config, state, card = read_checkpoint(folder)
        if encoder is None:
            encoder = SentenceEncoder(config.encoder, device=device)
        loads_decoder = decoder is None
        decoder = decoder or SoftPromptDecoder.load(config.decoder, device)
        check_compatible(config, encoder, decoder)
        parts, adapter = build_parts(config, state, folder)
        if adapter and not config.decoder_adapter.rank:
            raise DglmError(f"checkpoint {folder} holds decoder adapter weights, but its config.json "
                            "sets no adapter rank")
        if config.decoder_adapter.rank and not adapter:
            raise DglmError(f"checkpoint {folder} declares a decoder adapter but holds none of its weights; "
                            "train it with `dglm train prompt-generator`")
        if loads_decoder:  # the adapter's update is added in float32 (a folder may hold another format), then rounded
            hold_in(decoder.model, torch.float32)
        if adapter:
            load_adapter(decoder.model, config.decoder_adapter, adapter, adapter_scale)
        if loads_decoder:
            hold_in(decoder.model, number_format)
        return cls(config, encoder, decoder, parts, card, adapter)

    def save_pretrained(self, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        return write_checkpoint(Path(path), self.config, self.parts, self.card, dtype, self.adapter)

    def plain_decoder(self) -> SoftPromptDecoder:
        """The decoder as published, without this checkpoint's adapter: what baselines sample from."""
        if not self.adapter:
            return self.decoder
        if self._plain_decoder is None:
            self._plain_decoder = SoftPromptDecoder.load(self.config.decoder, str(self.decoder.device))
            hold_in(self._plain_decoder.model, self.decoder.dtype)  # baselines decode in the same number format
        return self._plain_decoder

    # ---- attributes ---------------------------------------------------------------------
    def make_guide(self, constraints: list[Constraint], diffusion: DiffusionSettings | None = None) -> Guide | None:
        """Resolve constraints against the registered attributes into a guide on this pipeline's encoder; the
        diffusion settings (the checkpoint's by default) say how the guide moves the proposal."""
        return build_guide(constraints, attribute_terms(constraints), self.encoder, self.config.encoder,
                           self.parts.normalizer, diffusion or self.config.diffusion)

    def probe_fits(self, probe) -> bool:
        """Whether a probe was trained on this pipeline's encoder (probes read one encoder's space only)."""
        return probe.reads(self.config.encoder, self.config.latent_dim)

    def attribute_scores(self, texts: list[str]) -> list[dict[str, dict[str, float]]]:
        """Each installed attribute's label probabilities for each text, from its probe on this encoder (what an
        application filters samples by); attributes whose probe was trained on another encoder are left out."""
        usable = {name: a.probe for name, a in get_attributes().items() if self.probe_fits(a.probe)}
        embeddings = self.encoder.encode(texts).to(self.decoder.device)
        with torch.no_grad():
            probabilities = {name: torch.softmax(probe.to(self.decoder.device)(embeddings), dim=-1).tolist()
                             for name, probe in usable.items()}
        return [{name: {label: round(p, 4) for label, p in zip(usable[name].labels, rows[i])}
                 for name, rows in probabilities.items()}
                for i in range(len(texts))]

    # ---- generation ---------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prefix: str | list[str], attributes: AttributeSpec = None, num_samples: int = 1, *,
                 seed: int | None = None, batch_size: int = 32, progress: bool = False,
                 stop: str | list[str] | None = None, **settings: Unpack[GenerationSettings]) -> list[Sample]:
        """Continue each prefix `num_samples` times so that the continuations carry `attributes`.

        `attributes` is a dict {name: label | (label, weight)} or a list of Constraint or
        "NAME=LABEL[:WEIGHT]" strings; a negative weight steers away from the label. Sample j of prefix
        i uses seed `seed + i * num_samples + j` (`Pipeline.plan`), stored in the result, which reproduces
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

        return list(tqdm(samples, total=len(prefixes) * num_samples, desc="generating", unit="sample",
                         disable=not progress))

    def generate_stream(self, prefixes: Iterable[str], attributes: AttributeSpec = None, num_samples: int = 1,
                        seed: int | None = None, batch_size: int = 32, skip: int = 0,
                        stop: str | list[str] | None = None,
                        **settings: Unpack[GenerationSettings]) -> Iterator[Sample]:
        """`generate` for inputs of any length: prefixes are read lazily and samples yielded in order, a batch at a
        time, so memory stays flat however many prefixes there are. `skip` leaves out the first samples (a
        resumed run); the others are exactly those `generate` gives for the same arguments. Every argument is
        checked at the call, each prefix (and the seed it needs) as it is read, before any model runs on it.

        Under a multi-process launch (torchrun; see the README), the batches are shared out over the processes
        and the main process yields every sample, in the same order and with the same text as one process; the
        other processes yield nothing. All processes must be given the same prefixes and arguments.
        """
        check_counts(num_samples, batch_size, seed)
        stops = stop_strings(stop)
        constraints = as_constraints(attributes)
        world, rank = process_group()
        rows = self.plan(prefixes, constraints, num_samples, seed=seed, skip=skip, **settings)
        targets = {c.attribute: c.label for c in constraints}

        def samples() -> Iterator[Sample]:  # a generator of its own, so that the checks above run at the call
            for round_of_batches in chunks(chunks(rows, batch_size), world):  # one batch per process a round
                mine = round_of_batches[rank] if rank < len(round_of_batches) else []
                token_ids = self.generate_rows(mine) if mine else []
                texts = [cut_at_stop(self.decoder.decode(ids), stops) for ids in token_ids]
                ours = [Sample(row.prefix, text, targets, row.seed, constraints, row.prefix_index, row.sample_index)
                        for row, text in zip(mine, texts)]
                for part in gather_to_main(ours, world, rank):
                    yield from part

        return samples()

    def plan(self, prefixes: Iterable[str], attributes: AttributeSpec = None, num_samples: int = 1, *,
             seed: int | Sequence[int] | None = None, skip: int = 0, logit_bias: dict[int, float] | None = None,
             **settings: Unpack[GenerationSettings]) -> Iterator[Row]:
        """The rows of a request, in order, and the one place where rows are made: sample j of prefix i is row
        k = i * num_samples + j, seeded `seed + k` (`seeding.sample_seed`; a random seed when None, the same on every
        process of a launch). `seed` may instead be every row's seed, in order (an evaluation's rows). `skip` leaves
        out the first rows (a resumed run). `logit_bias` ({token id: bias}) is added to every row's logits.

        The attributes, settings, counts and seed are checked at the call (`check_request`), each prefix, and the
        seed it needs, as it is read: a bad request fails before any model runs on it."""
        constraints = as_constraints(attributes)
        seeds = None if seed is None or isinstance(seed, int) else list(seed)
        check_request(constraints, settings, num_samples, seed=None if seeds is not None else seed)
        if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
            raise DglmError(f"skip must be a non-negative integer, got {skip!r}")
        for row_seed in seeds or []:
            check_seed(row_seed, 1)
        diffusion, decoding = self.settings(**settings)
        guide = self.make_guide(constraints, diffusion)
        base = 0 if seeds is not None else shared_seed(seed, process_group()[0])

        def rows() -> Iterator[Row]:  # a generator of its own, so that the checks above run at the call
            for i, text in enumerate(prefixes):
                check_prefix(i, text)
                for j in range(num_samples):
                    k = i * num_samples + j
                    if k < skip:
                        continue
                    if seeds is None:
                        check_seed(base, k + 1)
                    elif k >= len(seeds):
                        raise DglmError(f"{len(seeds)} seeds were given for more rows than that", field="seed")
                    row_seed = sample_seed(base, k) if seeds is None else seeds[k]
                    yield Row(text, row_seed, guide, diffusion, decoding, dict(logit_bias or {}), i, j)

        return rows()

    def settings(self, **overrides: Any) -> tuple[DiffusionSettings, DecodingSettings]:
        """The checkpoint's diffusion and decoding settings with `overrides` (None: keep) applied and validated."""
        check_setting_values(overrides)
        sections = {section: {} for section in SETTINGS_SECTIONS}
        for name, value in overrides.items():
            sections[SETTINGS[name][0]][name] = value
        diffusion = self.config.diffusion.updated(**sections["diffusion"])
        get_sampler(diffusion.sampler)  # the checkpoint's own sampler may be a plugin's that is not installed
        return diffusion, self.config.decoding.updated(**sections["decoding"])

    def generate_rows(self, rows: list[Row], on_step=None) -> list[list[int]]:
        """The continuation's token ids for each row, in one batch (`generate` validates and batches for you).

        The rows must share a diffusion schedule (`Row.schedule_key`); attributes, guidance scale and decoding
        settings may differ row by row. `on_step` is passed to the decoder (streaming, see
        `SoftPromptDecoder.generate_tokens`). Rows longer than their `segment_tokens` are written in segments
        (`dglm.segments`), each planned by `write`, apart from the rows planned once, so that each is written as it
        would be alone. Rows that ask to `end_at` a sentence are cut after their last complete one (`ended`).
        """
        if len({row.schedule_key for row in rows}) > 1:
            raise DglmError(f"rows in one batch must share {', '.join(SCHEDULE_SETTINGS)}")
        self.check_fits(rows)  # before any model runs, and before the encoder's warning
        segmented = [written_in_segments(row) for row in rows]
        in_segments = [index for index, flag in enumerate(segmented) if flag]
        once = [index for index, flag in enumerate(segmented) if not flag]
        if in_segments and on_step is not None:
            raise DglmError("text written in segments cannot be streamed token by token yet; send "
                            "segment_tokens 0 to stream", field="segment_tokens")
        token_ids: list[list[int]] = [[] for _ in rows]
        if in_segments:
            written = write_in_segments([rows[i] for i in in_segments], rows[0].diffusion.segment_tokens, self.write,
                                        self.decoder.decode, self.decoder.tokenizer.eos_token_id)
            for index, ids in zip(in_segments, written):
                token_ids[index] = ids
        if once:
            self.encoder.warn_if_cut([rows[i].prefix for i in once])
            written, _ = self.write([rows[i] for i in once], [rows[i].prefix for i in once],
                                    [rows[i].seed for i in once], [rows[i].decoding for i in once], on_step)
            for index, ids in zip(once, written):
                token_ids[index] = ids
        return [self.ended(row, ids) for row, ids in zip(rows, token_ids)]

    def ended(self, row: Row, token_ids: list[int]) -> list[int]:
        """A row's tokens as it asked to end: as written, or after their last complete sentence (`end_at`)."""
        if row.decoding.end_at != "sentence":
            return token_ids
        return whole_sentences(token_ids, self.decoder.decode, self.decoder.tokenizer.eos_token_id)

    def write(self, rows: list[Row], contexts: list[str], seeds: list[int], decodings: list[DecodingSettings],
              on_step=None, in_segments: bool = False, reading: list[str | Continued] | None = None
              ) -> tuple[list[list[int]], list[ReadContext]]:
        """One plan and its text for each row (`start_writing`, decoded to the end), and what the decoder read of
        each row's context (a next segment continues it); with candidates, one is kept (`choose_candidate`)."""
        if on_step is not None and any(row.diffusion.candidates > 1 for row in rows):
            raise DglmError("candidates above 1 cannot be streamed token by token: the text is known once a candidate "
                            "is chosen", field="candidates")
        writing = self.start_writing(rows, contexts, seeds, decodings, in_segments, reading)
        token_ids, chosen = iter(writing.batch.run(on_step=on_step)), []
        read = [writing.batch.contexts[draft] for draft, (_, candidate) in enumerate(writing.drafts) if candidate == 0]
        for row, context, text in zip(rows, writing.read, contexts):
            options = [next(token_ids) for _ in range(row.diffusion.candidates)]
            texts = [self.decoder.decode(ids) for ids in options] if len(options) > 1 else []
            before = text[len(row.prefix):]  # a context is the prefix and the continuation written so far
            chosen.append(options[self.choose_candidate(row, texts, context, before)] if texts else options[0])
        return chosen, read

    @torch.no_grad()
    def start_writing(self, rows: list[Row], contexts: list[str], seeds: list[int], decodings: list[DecodingSettings],
                      in_segments: bool = False, reading: list[str | Continued] | None = None) -> Writing:
        """One plan for each row, ready to decode: the diffusion proposes a meaning for what follows its context (the
        prefix, or the prefix and the text so far), under the row's attributes, from `seeds`, and the decoder reads
        the context and the plan's soft prompts, to write with `decodings`. A row with K candidates has K drafts, one
        after the other. For a segment of long text (`in_segments`), the encoder reads the most recent words of a
        context longer than its window (else, its beginning), the decoder reads `reading` when given
        (`dglm.segments.segment_context`) and keeps what it read for the next segment, and a row whose segments end
        at a sentence (`segment_end`) ends at its first sentence end. The rows must share a diffusion schedule
        (`Row.schedule_key`)."""
        drafts = [(index, candidate) for index, row in enumerate(rows) for candidate in range(row.diffusion.candidates)]
        read = [self.encoder.keep_recent(context) for context in contexts] if in_segments else contexts
        read_embeddings = self.encoder.encode(read).to(self.decoder.device)  # once a row, however many candidates
        texts, diffusion = [(reading or contexts)[index] for index, _ in drafts], rows[0].diffusion
        generators = sample_generators([candidate_seed(seeds[index], candidate) for index, candidate in drafts])
        guidance = BatchGuidance([rows[index].guide for index, _ in drafts],
                                 [rows[index].diffusion.guidance_scale for index, _ in drafts])
        latents = self.propose_latents(read_embeddings[[index for index, _ in drafts]], generators, guidance, diffusion)
        soft_prompts = self.soft_prompts(latents, generators, diffusion.renoise_alpha2)
        batch = self.decoder.start(texts, soft_prompts, generators, [decodings[i] for i, _ in drafts],
                                   logit_bias=[rows[i].logit_bias for i, _ in drafts], keep_read=in_segments,
                                   end_at_sentence=[in_segments and rows[i].diffusion.segment_end == "sentence"
                                                    for i, _ in drafts])
        return Writing(drafts, read_embeddings, batch)

    def choose_candidate(self, row: Row, texts: list[str], context: torch.Tensor | None = None,
                         before: str = "") -> int:
        """Which of a sample's decoded candidates to keep: of those whose every probe target the guidance probes read
        at `guidance_target` or more on the written continuation, the one whose embedding is closest to the prefix's
        (what stays on the prefix); when none is, the one whose targets' weighted log-probability is highest. Only
        what generation has is used: the guidance probes and the encoder. Phrases count towards closeness: the cosine
        to each phrase, signed by its weight, is added to the cosine to the prefix. `context` is the embedding of what
        the candidates follow (`Writing.read`); the prefix's when None. With `avoid_repeats`, candidates that repeat
        a phrase of the continuation written `before` them, or one of their own, are passed over when another is
        not."""
        context = self.encoder.encode([row.prefix])[0] if context is None else context
        embeddings = self.encoder.encode(texts).to(self.decoder.device)
        fresh = without_new_repeats(texts, before, row.diffusion.avoid_repeats)
        allowed = torch.tensor(fresh, device=embeddings.device)
        closeness = (embeddings @ context.to(self.decoder.device)).masked_fill(~allowed, -math.inf)
        if row.guide is None:
            return int(closeness.argmax())
        for bound in row.guide.phrases:
            closeness = closeness + (embeddings @ bound.embedding) * (1 if bound.at_least else -1)
        with torch.no_grad():
            log_prob = row.guide.embedding_log_prob(embeddings)
            reached = allowed.clone()
            for probe, label_index, weight in row.guide.terms:
                p = torch.softmax(probe(embeddings), dim=-1)[:, label_index]
                reached &= (p if weight >= 0 else 1 - p) >= row.diffusion.guidance_target
        if bool(reached.any()):
            return int(torch.where(reached, closeness, torch.full_like(closeness, -math.inf)).argmax())
        return int(log_prob.masked_fill(~allowed, -math.inf).argmax())

    def check_fits(self, rows: list[Row]) -> None:
        """Refuse rows whose prefix, soft prompts and new tokens would overrun the decoder's context, before any
        model runs (the decoder checks again as it starts, for callers that decode without diffusion)."""
        for row, prefix_ids in zip(rows, self.decoder.token_ids([row.prefix for row in rows])):
            self.decoder.check_fits(prefix_ids, self.config.prompt_generator.num_soft_prompts,
                                    row.decoding.max_new_tokens)

    def propose_latents(self, prefixes: list[str] | torch.Tensor, generators: list[torch.Generator],
                        guidance: BatchGuidance | None = None,
                        diffusion: DiffusionSettings | None = None) -> torch.Tensor:
        """The guided diffusion alone: one clean continuation latent per prefix (a text, or its encoder embedding)
        and generator."""
        diffusion = diffusion or self.config.diffusion
        embeddings = prefixes if isinstance(prefixes, torch.Tensor) else self.encoder.encode(list(prefixes))
        prefix_latents = self.parts.normalizer.to_latent(embeddings.to(self.decoder.device))
        return diffuse(self.parts.denoiser, get_sampler(diffusion.sampler)(self.schedule), prefix_latents, generators,
                       diffusion.steps, guidance=guidance, prefix_guidance=diffusion.prefix_guidance,
                       guidance_start=diffusion.guidance_start, particles=diffusion.particles)

    def soft_prompts(self, latents: torch.Tensor, generators: list[torch.Generator],
                     renoise_alpha2: float | None = None) -> torch.Tensor:
        """Re-noise latents to the level the prompt generator was trained on, then make soft prompts."""
        noise = per_sample_randn(generators, (latents.shape[-1],), device=latents.device)
        alpha2 = self.config.diffusion.renoise_alpha2 if renoise_alpha2 is None else renoise_alpha2
        return self.parts.prompt_generator(noise_to_level(latents, alpha2, noise))
