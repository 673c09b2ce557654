"""Configuration of a pipeline: plain dataclasses that round-trip through JSON and YAML."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

from dglm.config_files import build_dataclass, load_yaml, type_name
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


def setting(default: Any, help: str, *, at_least: float | None = None, above: float | None = None,
            at_most: float | None = None, below: float | None = None, alias: str | None = None,
            choices: tuple[str, ...] | None = None) -> Any:
    """Declare a generation setting once: its default, its help text and its valid range.

    From this one declaration come the validation and its message, the `dglm generate` flag, the server's
    request field (`alias` is the OpenAI name, when it differs) and the model card's line; `Pipeline.generate`
    takes the same names as typed keyword arguments (a test keeps them in step). A name may list its `choices`.
    """
    bounds = {"at_least": at_least, "above": above, "at_most": at_most, "below": below}
    return field(default=default, metadata={"help": help, "alias": alias, "choices": choices, **bounds})


def accepted(spec: dataclasses.Field, kind: type) -> str:
    """What a setting accepts, in words: "an integer >= 1", "a number in (0, 1]", "one of length, sentence"."""
    if spec.metadata["choices"]:
        return f"one of {', '.join(spec.metadata['choices'])}"
    low = ("[", spec.metadata["at_least"]) if spec.metadata["at_least"] is not None else ("(", spec.metadata["above"])
    high = ("]", spec.metadata["at_most"]) if spec.metadata["at_most"] is not None else (")", spec.metadata["below"])
    noun = "a name" if kind is str else type_name(kind)
    if low[1] is not None and high[1] is not None:
        return f"{noun} in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    if low[1] is not None:
        return f"{noun} {'>=' if low[0] == '[' else '>'} {low[1]:g}"
    if high[1] is not None:
        return f"{noun} {'<=' if high[0] == ']' else '<'} {high[1]:g}"
    return noun


def check_setting(spec: dataclasses.Field, kind: type, value: Any) -> Any:
    """`value` if it is a valid value of the setting, else a DglmError saying what is accepted."""
    meta = spec.metadata
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    valid = isinstance(value, kind) and not isinstance(value, bool)
    if valid and kind is float:
        valid = math.isfinite(value)
    if valid and kind in (int, float):
        valid = ((meta["at_least"] is None or value >= meta["at_least"])
                 and (meta["above"] is None or value > meta["above"])
                 and (meta["at_most"] is None or value <= meta["at_most"])
                 and (meta["below"] is None or value < meta["below"]))
    if valid and kind is str:
        valid = bool(value.strip()) and (not meta["choices"] or value in meta["choices"])
    if not valid:
        raise DglmError(f"{spec.name} must be {accepted(spec, kind)}, got {value!r}", field=spec.name)
    return value


class Settings:
    """A section of generation settings (declared with `setting`): validated whenever it is built."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for spec in dataclasses.fields(self):
            setattr(self, spec.name, check_setting(spec, hints[spec.name], getattr(self, spec.name)))

    def updated(self, **overrides: Any) -> Any:
        """A copy with the given settings changed (None leaves one as it is), validated."""
        return dataclasses.replace(self, **{name: value for name, value in overrides.items() if value is not None})

    def describe(self) -> str:
        return ", ".join(f"{spec.name.replace('_', ' ')} "
                         f"{getattr(self, spec.name)}" for spec in dataclasses.fields(self))


@dataclass
class DiffusionSettings(Settings):
    """How the continuation's latent is proposed: the sampler and the guidance."""

    sampler: str = setting("ddim", "diffusion sampler: ddim or dpmsolver++, or one a plugin adds (`dglm plugins`)")
    steps: int = setting(20, "diffusion steps; fewer is faster", at_least=1, at_most=1000)
    guidance_scale: float = setting(4.0, "strength of the attribute probes' guidance; 0 turns all guidance off, "
                                               "phrases too (a phrase's strength is its weight, see PHRASE_COSINE)",
                                    at_least=0)
    guidance_mode: str = setting("gradient", "how guidance moves the proposal: gradient (as hard as the scale says), "
                                             "margin (stops at GUIDANCE_TARGET) or project (the smallest move that "
                                             "reaches GUIDANCE_TARGET)")
    guidance_classifier: str = setting("linear", "what reads the attributes as guidance moves the proposal: linear "
                                                 "(each attribute's probe, on the clean estimate) or noise-conditioned "
                                                 "(an MLP trained on noised embeddings, for attributes that ship one: "
                                                 "`dglm attributes`; gradient mode only)")
    guidance_target: float = setting(0.9, "probability of each target at which margin and project guidance stop",
                                     above=0, below=1)
    guidance_anchor: float = setting(0.0, "gradient and margin guidance: pull towards the prefix's own meaning (weight "
                                          "of the cosine to the prefix's embedding against the targets' "
                                          "log-probability); 0 turns it off", at_least=0)
    guidance_start: float = setting(1.0, "time (1: pure noise, 0: clean) from which the probes guide; lower leaves the "
                                         "first, noisiest steps, which set the gist, unguided "
                                         "(Kynkaanniemi et al. 2024)",
                                    above=0, at_most=1)
    phrase_cosine: float = setting(0.4, "cosine to a phrase's embedding that --toward at weight 1 asks of the proposal "
                                        "(unrelated text sits near 0.1): weight W asks at least W times it, --away at "
                                        "weight W at most (1 - W) times it", above=0, below=1)
    prefix_guidance: float = setting(1.0, "classifier-free guidance on the prefix; 1 turns it off, more follows the "
                                          "prefix more closely", at_least=0)
    mc_draws: int = setting(16, "Monte-Carlo draws that blur the clean estimate the attribute probes score", at_least=1,
                            at_most=1024)
    candidates: int = setting(1, "proposals drawn and decoded for each sample, of which one is kept: among those whose "
                                 "every attribute the guidance probes read at GUIDANCE_TARGET or more on the written "
                                 "text, the one closest to the prefix; when none is, the one that carries the "
                                 "attributes best. 1 keeps the first (the sample's own draw)", at_least=1, at_most=64)
    avoid_repeats: int = setting(0, "with CANDIDATES above 1, pass over a candidate that repeats a phrase of this "
                                    "many words (one the continuation already holds, or one of its own twice) when "
                                    "another does not; keeps long text from looping. 0 turns it off",
                                 at_least=0, at_most=32)
    particles: int = setting(1, "latent particles the diffusion runs for each proposal, resampled a few times by how "
                                "far the attribute probes read their targets and drawn from at the end (sequential "
                                "Monte Carlo; the ddim sampler only); 1 runs one", at_least=1, at_most=64)
    segment_tokens: int = setting(0, "write text longer than this many tokens in segments of this many, each planned "
                                     "anew from the text so far (under the same attributes); 0 plans the whole "
                                     "continuation once. The encoder reads the most recent words of a long text",
                                  at_least=0, at_most=4096)
    segment_end: str = setting("length", "where each segment of text written in segments ends: length (after "
                                         "SEGMENT_TOKENS tokens) or sentence (at its first token that ends a "
                                         "sentence, within SEGMENT_TOKENS tokens), so that the next plan starts a "
                                         "sentence", choices=("length", "sentence"))
    segment_guidance: float = setting(1.0, "the guidance scale of every segment after the first, as a share of "
                                           "GUIDANCE_SCALE: the first segment sets the attributes, and later ones, "
                                           "planned from text that already carries them, need less push (pushed less, "
                                           "long texts end less alike across prefixes); 1 guides every segment alike. "
                                           "It scales the push only: choosing among candidates and resampling "
                                           "particles still read the attributes, and project mode, which the scale "
                                           "only switches on, changes only at 0", at_least=0, at_most=1)
    renoise_alpha2: float = setting(0.95, "signal level alpha^2 the proposal is re-noised to before it becomes soft "
                                          "prompts (what the prompt generator was trained on); 1 keeps it clean",
                                    above=0, at_most=1)


@dataclass
class DecodingSettings(Settings):
    """How the decoder writes the continuation from [prefix ; soft prompts]."""

    max_new_tokens: int = setting(20, "length of each continuation in tokens", at_least=1, alias="max_tokens")
    temperature: float = setting(1.0, "sampling temperature; 0.7 gives more fluent, less varied text, 0 always takes "
                                      "the likeliest token (greedy)", at_least=0)
    top_p: float = setting(0.9, "nucleus sampling: keep the likeliest tokens up to this probability mass",
                           above=0, at_most=1)
    top_k: int = setting(0, "keep only the TOP_K likeliest tokens; 0 turns it off", at_least=0)
    min_p: float = setting(0.0, "drop tokens less than MIN_P times as likely as the likeliest one; keeps text on its "
                                "attribute, 0 turns it off", at_least=0, below=1)
    repetition_penalty: float = setting(1.2, "penalty for tokens already in the text; 1 turns it off", above=0)
    presence_penalty: float = setting(0.0, "OpenAI's: subtracted from the logit of every token the continuation "
                                           "already holds; 0 turns it off", at_least=-2, at_most=2)
    frequency_penalty: float = setting(0.0, "OpenAI's: subtracted from a token's logit once for each time the "
                                            "continuation already holds it; 0 turns it off", at_least=-2, at_most=2)
    end_at: str = setting("length", "where each continuation ends: length (after max_new_tokens tokens, or at the end "
                                    "of text) or sentence (then cut after its last complete sentence, if it has one; "
                                    "max_new_tokens stays the cap)", choices=("length", "sentence"))


SETTINGS_SECTIONS: dict[str, type[Settings]] = {"diffusion": DiffusionSettings, "decoding": DecodingSettings}


class GenerationSettings(TypedDict, total=False):
    """The settings `Pipeline.generate` takes by name, for editors and type checkers: each is declared, with its
    range and help, in DiffusionSettings or DecodingSettings above (a test keeps the two in step); None or left out
    keeps the checkpoint's value."""

    sampler: str | None
    steps: int | None
    guidance_scale: float | None
    guidance_mode: str | None
    guidance_classifier: str | None
    guidance_target: float | None
    guidance_anchor: float | None
    guidance_start: float | None
    phrase_cosine: float | None
    prefix_guidance: float | None
    mc_draws: int | None
    candidates: int | None
    avoid_repeats: int | None
    particles: int | None
    segment_tokens: int | None
    segment_end: str | None
    segment_guidance: float | None
    renoise_alpha2: float | None
    max_new_tokens: int | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    min_p: float | None
    repetition_penalty: float | None
    presence_penalty: float | None
    frequency_penalty: float | None
    end_at: str | None


def declared_settings() -> dict[str, tuple[str, dataclasses.Field, type]]:
    """Every generation setting by name: (its section, its declaration, its type)."""
    declared = {}
    for section, cls in SETTINGS_SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for spec in dataclasses.fields(cls):
            declared[spec.name] = (section, spec, hints[spec.name])
    return declared


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
    diffusion: DiffusionSettings = field(default_factory=DiffusionSettings)
    decoding: DecodingSettings = field(default_factory=DecodingSettings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PipelineConfig":
        return build_dataclass(cls, data, "config")


Precision = Literal["fp32", "bf16"]


@dataclass
class DataConfig:
    train: str = "data/pairs-train.jsonl"
    max_pairs: int = 0  # 0: every pair
    all_pairs_from: list[str] = field(default_factory=list)  # sources kept whole, past max_pairs
    # A share of the pairs (the same ones every run) take their continuation from the pair on the same line of
    # `mix_targets_from`, which must hold the same prefixes: e.g. real targets mixed into decoder-written ones.
    mix_targets_from: str = ""
    mix_share: float = 0.0
    # The text whose embedding is a pair's latent: its "continuation" (the target text), or the "real_continuation"
    # that `dglm data nearest` keeps on each decoder-written pair, so that the latents are the corpus's, as the
    # denoiser proposes them, while the text to write is the decoder's. The latent is what the denoiser and
    # `prompt_generator.label_weights` read.
    latent_from: str = "continuation"


@dataclass
class DenoiserTraining:
    steps: int = 6000
    batch_size: int = 256
    learning_rate: float = 5e-4
    warmup: int = 200
    ema_decay: float = 0.999
    prefix_dropout: float = 0.1
    self_condition: float = 0.5
    precision: Precision = "fp32"  # "bf16": matrix products in bfloat16 under autocast (weights stay fp32)
    checkpoint_every: int = 500


@dataclass
class PromptGeneratorTraining:
    steps: int = 600
    batch_size: int = 8
    learning_rate: float = 3e-4
    adapter_learning_rate: float = 3e-4  # for the decoder's LoRA adapter, when the pipeline has one
    warmup: int = 50
    alpha2_min: float = 0.7
    max_target_tokens: int = 20
    bag_of_words_steps: int = 0  # steps of bag-of-words-only pretraining before the joint training
    bag_of_words_batch_size: int = 64
    bag_of_words_weight: float = 0.0  # weight of the bag-of-words loss during the joint training
    # how often a pair is drawn, by its source (default 1)
    source_weights: dict[str, float] = field(default_factory=dict)
    # How often a pair is drawn, by the label an attribute's probe reads from its continuation ({sentiment: {negative:
    # 1.5}}; default 1; multiplied with source_weights): rebalances targets no source weight can, such as
    # decoder-written ones that lean positive everywhere (`dglm data distill` reports the weight).
    label_weights: dict[str, dict[str, float]] = field(default_factory=dict)
    # The KL anchor: on this share of steps, the adapted decoder without soft prompts is held to the published one
    # by this weight times their KL divergence, so that the adapter changes the decoder only where soft prompts ask.
    anchor_share: float = 0.0
    anchor_weight: float = 0.0
    precision: Precision = "fp32"  # "bf16": the frozen decoder held in bfloat16, the step under autocast
    checkpoint_every: int = 100


@dataclass
class TrainConfig:
    # Resume states, the embedding cache and the checkpoint live outside the repository; "~" is expanded.
    run_dir: str = "~/.cache/dglm/runs/default"
    output: str = "~/.cache/dglm/runs/default/checkpoint"
    # A checkpoint to start from while `output` holds none (a trial that fine-tunes the default, say): its denoiser,
    # prompt generator and adapter are the starting weights, and the prompt generator is fine-tuned, not restarted.
    init_from: str = ""
    seed: int = 0
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    data: DataConfig = field(default_factory=DataConfig)
    denoiser: DenoiserTraining = field(default_factory=DenoiserTraining)
    prompt_generator: PromptGeneratorTraining = field(default_factory=PromptGeneratorTraining)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir).expanduser()

    @property
    def output_path(self) -> Path:
        return Path(self.output).expanduser()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_yaml(cls, path: Path | str) -> "TrainConfig":
        return load_yaml(cls, path, "training")


@dataclass
class EvalConfig:
    """What `dglm eval` runs: methods x conditions x prefixes x samples, and how it judges them."""

    prefixes: str = "benchmarks/prefixes.txt"
    max_prefixes: int = 0  # the first N prefixes only (0: all), for a quicker run of a long benchmark
    num_samples: int = 20
    max_new_tokens: int = 20
    seed: int = 0
    batch_size: int = 25
    model: str | None = None
    conditions: list[str] = field(default_factory=lambda: ["none", "sentiment=positive", "sentiment=negative"])
    methods: dict = field(default_factory=lambda: {"dglm": {}, "plain": {}})  # name -> options; also NAME:VARIANT
    judges: dict[str, str] = field(default_factory=lambda: {"sentiment": "data/sentiment-judge.csv",
                                                            "topic": "data/topic-judge.csv"})
    perplexity: str | None = "gemma-3-270m"
    training_pairs: str | None = None  # JSONL pairs to check samples against for 8-word verbatim copies
    collapse_encoder: str | None = "all-mpnet-base-v2"  # measures collapse (not the guidance's encoder); null: off
    long_text: bool = False  # also measure repetition, length and each continuation's last third judged alone
    tradeoff_condition: str | None = None
    tradeoff_scales: list[float] = field(default_factory=lambda: [0.0, 2.0, 4.0, 8.0])
    out: str = "benchmarks/results/eval"

    @classmethod
    def from_yaml(cls, path: Path | str) -> "EvalConfig":
        """The evaluation config at `path` (its methods' names and options are checked by the evaluation harness,
        which knows the registered methods)."""
        return load_yaml(cls, path, "evaluation")
