"""Train the denoiser and the prompt generator from a YAML config (`dglm train`).

Both stages read prefix/continuation pairs (see `dglm data build`), encode them once with the frozen
encoder (cached in the run folder), and run through `accelerate`, so the same command works on a
CPU, one GPU, or several (`accelerate launch -m dglm train ...`). Each stage resumes from its last
state in the run folder and writes the pipeline checkpoint to `output` when it ends.
"""

from __future__ import annotations

import platform
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dglm.config import TrainConfig
from dglm.data.pairs import latent_texts, pair_weights, select_pairs, source_of
from dglm.errors import DglmError
from dglm.processes import join_process_group
from dglm.stages.schedule import CosineSchedule, noise_to_level
from dglm.tensor_cache import cached_tensors, texts_digest
from dglm.training.distill import label_pair_weights
from dglm.training.loop import LegTimer, LoopResult, StartPoint, run_loop
from dglm.training.plots import plot_losses
from dglm.training.state import EMA, has_training_state


def encoded_pairs(config: TrainConfig, pairs: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix and continuation (latent) embeddings, computed once and cached in the run folder (fp16); the latent is
    the embedding of the text `data.latent_from` names.

    The cache's name holds a digest of the texts and the encoder, so another selection of pairs never
    reads embeddings that belong to a different one.
    """
    from dglm.stages.encoder import SentenceEncoder

    meanings = latent_texts(pairs, config.data.latent_from)

    def encode() -> dict[str, torch.Tensor]:
        texts = [p["prefix"] for p in pairs] + meanings
        embeddings = SentenceEncoder(config.pipeline.encoder).encode(texts, batch_size=128, progress=True).half()
        return {"prefix": embeddings[: len(pairs)], "continuation": embeddings[len(pairs):]}

    digest = texts_digest(config.pipeline.encoder, (text for p, m in zip(pairs, meanings) for text in (p["prefix"], m)))
    tensors = cached_tensors(config.run_path / f"embeddings-{len(pairs)}-{digest[:12]}.safetensors", encode)
    return tensors["prefix"].float(), tensors["continuation"].float()


def starting_parts(config: TrainConfig):
    """The output checkpoint's parts, card and decoder adapter when it was trained with this pipeline config (or,
    while there is none, those of `init_from`), else fresh parts, an empty card and no adapter."""
    from dglm.checkpoint import TrainableParts, build_parts, read_checkpoint

    output = config.output_path
    started = (output / "config.json").is_file() or not config.init_from
    start = output if started else Path(config.init_from).expanduser()
    if (start / "config.json").is_file():
        saved_config, state, card = read_checkpoint(start)
        if saved_config == config.pipeline:
            parts, adapter = build_parts(saved_config, state, start)
            if start != output:  # another run's stages: the starting weights, not steps of this run
                card = {stage: {**facts, "inherited_from": config.init_from} for stage, facts in card.items()}
            return parts, card, adapter
        if start != output:
            raise DglmError(f"init_from {start} was trained with another pipeline config than this run's; start from a "
                            "checkpoint of the same pipeline, or drop init_from")
    elif start != output:
        raise DglmError(f"init_from {start} is not a checkpoint folder (no config.json)")
    return TrainableParts(config.pipeline), {}, {}


@dataclass
class Stage:
    """One stage of a training run, as prepared on this process: its name, the run's config and the pairs it reads."""

    name: str  # "denoiser" or "prompt-generator"
    config: TrainConfig
    config_path: str
    accelerator: Any
    pairs: list[dict]

    @property
    def key(self) -> str:
        """The stage's name in the config and the model card."""
        return self.name.replace("-", "_")

    @property
    def settings(self):
        return getattr(self.config, self.key)

    @property
    def state_path(self) -> Path:
        return self.config.run_path / f"{self.name}-state"


def prepare_stage(name: str, config: TrainConfig, config_path: str) -> tuple[Stage, torch.Tensor, torch.Tensor]:
    """Join the process group, seed, select the pairs and encode them: the stage, and the prefix and continuation
    embeddings."""
    from accelerate.utils import set_seed

    accelerator = join_process_group()
    set_seed(config.seed)
    config.run_path.mkdir(parents=True, exist_ok=True)
    pairs = select_pairs(config.data)
    with accelerator.main_process_first():
        prefix, continuation = encoded_pairs(config, pairs)  # the others read the main process's cache
    return Stage(name, config, config_path, accelerator, pairs), prefix, continuation


def steps_in_checkpoint(card: dict, stage: Stage) -> StartPoint:
    """How many steps of this stage, trained with this stage config, the output checkpoint already holds, and
    the seconds they took. A run whose resume state is lost continues from there (with a fresh optimizer)."""
    facts = card.get(stage.key, {})
    if "config" not in facts or "inherited_from" in facts or not same_stage_config(facts["config"], stage.settings):
        return StartPoint()
    return StartPoint(int(facts.get("steps", 0)), float(facts.get("wall_time_s", 0)))


def same_stage_config(saved: dict, settings) -> bool:
    """Whether a model card's record of a stage's config is `settings` (options added since it was written count as
    at their defaults)."""
    return {**asdict(type(settings)()), **saved} == asdict(settings)


def finish_stage(stage: Stage, parts, card: dict, result: LoopResult, start: StartPoint,
                 adapter: dict | None = None) -> Path:
    """Plot the losses, record the stage in the model card and write the checkpoint (main process only).

    `start` is where a lost resume state made the run restart (step 0: it did not); a leg that stopped early
    writes its checkpoint too, so it can be kept between legs.
    """
    config = stage.config
    if not stage.accelerator.is_main_process:
        return config.output_path
    plot_losses(result.losses, config.run_path / f"{stage.name}-loss.png", f"{stage.name} loss")
    restarts = card.get(stage.key, {}).get("restarted_without_optimizer_state_at", [])
    card[stage.key] = stage_card(stage, result)
    if start.step or restarts:
        card[stage.key]["restarted_without_optimizer_state_at"] = restarts + ([start.step] if start.step else [])
    if result.steps < stage.settings.steps:
        print(f"{stage.name}: leg ended at step {result.steps} of {stage.settings.steps}; run the same command again "
              "to continue", file=sys.stderr)
    return save_checkpoint(config, parts, card, adapter)


def resume_point(card: dict, stage: Stage) -> StartPoint:
    """Where to restart when the stage has no resume state but its checkpoint holds some steps; step 0 otherwise
    (also while the run starts from `init_from`: those steps are another run's)."""
    if has_training_state(stage.state_path) or not (stage.config.output_path / "config.json").is_file():
        return StartPoint()
    return steps_in_checkpoint(card, stage)


def train_denoiser(config: TrainConfig, config_path: str, leg: LegTimer | None = None) -> Path:
    """v-prediction MSE on continuation latents, conditioned on prefix latents (dropped 10% for CFG)."""
    t = config.denoiser
    if config.init_from:
        raise DglmError(f"init_from ({config.init_from}) fine-tunes that checkpoint's prompt generator on its "
                        "denoiser; run `dglm train prompt-generator`, or drop init_from to train a denoiser")
    stage, prefix, continuation = prepare_stage("denoiser", config, config_path)
    parts, card, adapter = starting_parts(config)
    parts.normalizer.fit(continuation)
    x_all, c_all = parts.normalizer.to_latent(continuation), parts.normalizer.to_latent(prefix)
    schedule = CosineSchedule(config.pipeline.schedule_shift)
    device = stage.accelerator.device

    def batch_loss(model, generator):
        index = torch.randint(0, len(x_all), (t.batch_size,), generator=generator)
        x, c = x_all[index].to(device), c_all[index].to(device)
        times = torch.rand(t.batch_size, generator=generator).to(device)
        alpha, sigma = (v[:, None] for v in schedule.alpha_sigma(times))
        logsnr = schedule.logsnr(times)
        noise = torch.randn(x.shape, generator=generator).to(device)
        z = alpha * x + sigma * noise
        keep_prefix = torch.rand(t.batch_size, generator=generator).to(device) >= t.prefix_dropout
        self_cond = None
        if torch.rand(1, generator=generator).item() < t.self_condition:
            with torch.no_grad():
                self_cond = alpha * z - sigma * model(z, logsnr, c, prefix_mask=keep_prefix)
        v = model(z, logsnr, c, self_cond=self_cond, prefix_mask=keep_prefix)
        return F.mse_loss(v.float(), alpha * noise - sigma * x)

    optimizer = torch.optim.AdamW(parts.denoiser.parameters(), lr=t.learning_rate, weight_decay=0.01)
    ema = EMA(parts.denoiser, t.ema_decay)
    start = resume_point(card, stage)
    if start.step >= t.steps:  # the checkpoint holds the whole stage; only its resume state is gone
        return config.output_path
    result = run_loop(stage.accelerator, parts.denoiser, optimizer, "denoiser", t.steps, t.warmup, t.checkpoint_every,
                      stage.state_path, batch_loss, config.seed, t.precision, leg or LegTimer(None), ema, start)
    ema.copy_to(parts.denoiser)
    return finish_stage(stage, parts, card, result, start, adapter)


class PromptGeneratorStage(nn.Module):
    """What the prompt-generator stage optimises: the prompt generator and the decoder's LoRA weights.

    The decoder is held as a plain attribute, outside the module tree, so training states (and DDP on
    several GPUs) see only the trainable weights; its adapter parameters are registered here too.
    """

    def __init__(self, prompt_generator: nn.Module, decoder, max_target_tokens: int, decoder_weight: float,
                 bag_of_words_weight: float, anchor_weight: float = 0.0):
        super().__init__()
        self.prompt_generator = prompt_generator
        self.decoder = decoder
        self.adapter = nn.ParameterList([p for p in decoder.model.parameters() if p.requires_grad])
        self.max_target_tokens = max_target_tokens
        self.decoder_weight, self.bag_of_words_weight = decoder_weight, bag_of_words_weight
        self.anchor_weight = anchor_weight

    def forward(self, noisy_latents: torch.Tensor, prefixes: list[str], continuations: list[str],
                anchored: bool = False) -> torch.Tensor:
        """Weighted sum of the decoder's cross-entropy of the continuations and the bag-of-words loss, plus, on an
        `anchored` step, the KL anchor to the published decoder."""
        soft_prompts = self.prompt_generator(noisy_latents)
        loss = torch.zeros((), device=soft_prompts.device)
        if self.decoder_weight:
            loss = loss + self.decoder_weight * self.decoder.loss(prefixes, continuations, soft_prompts,
                                                                  self.max_target_tokens)
        if self.bag_of_words_weight:
            loss = loss + self.bag_of_words_weight * self.decoder.bag_of_words_loss(continuations, soft_prompts,
                                                                                    self.max_target_tokens)
        if anchored and self.anchor_weight:
            loss = loss + self.anchor_weight * self.decoder.anchor_loss(prefixes, continuations, self.max_target_tokens)
        return loss


def check_anchor(config: TrainConfig) -> None:
    """The anchor holds a decoder adapter to the published decoder: it needs an adapter, a share in [0, 1] and a
    weight of at least 0."""
    t = config.prompt_generator
    if t.anchor_share and t.anchor_weight and not config.pipeline.decoder_adapter.rank:
        raise DglmError("prompt_generator.anchor_share and anchor_weight hold a decoder adapter to the published "
                        "decoder, but pipeline.decoder_adapter.rank is 0 (no adapter); set a rank or drop the anchor")
    if not (0 <= t.anchor_share <= 1 and t.anchor_weight >= 0):
        raise DglmError(f"prompt_generator.anchor_share must be in [0, 1] and anchor_weight at least 0, got "
                        f"{t.anchor_share} and {t.anchor_weight}")


def train_prompt_generator(config: TrainConfig, config_path: str, leg: LegTimer | None = None) -> Path:
    """Decoder cross-entropy of the true continuation given soft prompts from its re-noised latent.

    With `bag_of_words_steps`, the prompt generator first learns, alone and at a large batch, to put the
    continuation's words into its soft prompts (no pass through the decoder, so ~20x cheaper per example);
    the joint training with the decoder then starts from prompts the decoder can already read.
    """
    from dglm.stages.decoder import SoftPromptDecoder
    from dglm.stages.decoder_adapter import adapter_state, add_adapter, set_adapter_weights

    t = config.prompt_generator
    leg = leg or LegTimer(None)
    stage, _, continuation = prepare_stage("prompt-generator", config, config_path)
    accelerator, pairs = stage.accelerator, stage.pairs
    parts, card, saved_adapter = starting_parts(config)
    if "denoiser" not in card:
        raise DglmError(f"train the denoiser first: {config.output} has no denoiser trained with this config")
    check_anchor(config)
    start = resume_point(card, stage)
    if start.step >= t.steps:  # the checkpoint holds the whole stage; only its resume state is gone
        return config.output_path
    decoder = SoftPromptDecoder.load(config.pipeline.decoder, str(accelerator.device), trainable=True)
    model_lm = decoder.model
    model_lm.requires_grad_(False)
    if t.precision == "bf16":
        model_lm.to(torch.bfloat16)  # frozen weights: cast once here rather than at every autocast matmul
    adapter = add_adapter(model_lm, config.pipeline.decoder_adapter) if config.pipeline.decoder_adapter.rank else []
    for parameter in adapter:
        parameter.data = parameter.data.float()  # trained weights stay fp32
    fresh = not start.step and not has_training_state(stage.state_path)
    fine_tune = fresh and "inherited_from" in card.get("prompt_generator", {})  # init_from's prompt generator
    if (start.step or fine_tune) and adapter and saved_adapter:
        set_adapter_weights(model_lm, saved_adapter)
    latents = parts.normalizer.to_latent(continuation)
    run_dir = config.run_path
    weights = pair_weights(pairs, t.source_weights)
    if t.label_weights:
        by_label = label_pair_weights(continuation, t.label_weights, config.pipeline.encoder)
        weights = by_label if weights is None else weights * by_label

    def batches_of(size: int):
        def batch_loss(model, generator):
            if weights is None:
                index = torch.randint(0, len(pairs), (size,), generator=generator)
            else:
                index = torch.multinomial(weights, size, replacement=True, generator=generator)
            alpha2 = t.alpha2_min + (1 - t.alpha2_min) * torch.rand(size, generator=generator)
            noise = torch.randn(size, latents.shape[1], generator=generator)
            batch = [pairs[i] for i in index.tolist()]
            # Drawn after the batch, so that a run with the anchor sees the same batches as one without.
            anchored = bool(t.anchor_share) and torch.rand(1, generator=generator).item() < t.anchor_share
            return model(noise_to_level(latents[index], alpha2, noise).to(accelerator.device),
                         [p["prefix"] for p in batch], [p["continuation"] for p in batch], anchored)
        return batch_loss

    words_seconds = 0.0
    if fresh and not fine_tune:  # a fresh prompt generator, not a resumed or fine-tuned one
        match_token_scale(parts.prompt_generator, decoder)
        if t.bag_of_words_steps:
            words = PromptGeneratorStage(parts.prompt_generator, decoder, t.max_target_tokens, 0.0, 1.0)
            optimizer = torch.optim.AdamW(parts.prompt_generator.parameters(), lr=t.learning_rate, weight_decay=0.01)
            words_run = run_loop(
                accelerator, words, optimizer, "prompt-generator (bag of words)", t.bag_of_words_steps, t.warmup,
                t.checkpoint_every, run_dir / "prompt-generator-words-state", batches_of(t.bag_of_words_batch_size),
                config.seed, t.precision, leg)
            words_seconds = words_run.seconds
            if accelerator.is_main_process:
                plot_losses(words_run.losses, run_dir / "prompt-generator-words-loss.png",
                            "prompt generator: bag-of-words loss")
    joint = PromptGeneratorStage(parts.prompt_generator, decoder, t.max_target_tokens, 1.0, t.bag_of_words_weight,
                                 t.anchor_weight)
    groups = [{"params": list(parts.prompt_generator.parameters()), "lr": t.learning_rate}]
    if adapter:
        groups.append({"params": adapter, "lr": t.adapter_learning_rate})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    result = run_loop(accelerator, joint, optimizer, "prompt-generator", t.steps, t.warmup, t.checkpoint_every,
                      stage.state_path, batches_of(t.batch_size), config.seed, t.precision, leg, fallback=start)
    result.seconds += words_seconds
    return finish_stage(stage, parts, card, result, start, adapter_state(model_lm) if adapter else None)


def train_all(config: TrainConfig, config_path: str, leg: LegTimer | None = None) -> Path:
    """Build the corpus if it is missing, then train the denoiser and the prompt generator, resuming either.

    A leg that runs out of time during the denoiser stops there; the next leg finishes it and goes on."""
    leg = leg or LegTimer(None)
    if not Path(config.data.train).is_file():
        from dglm.data.corpus import build

        data_folder = Path(config.data.train).parent
        build(data_folder, data_folder / "sources", seed=config.seed)
    output = train_denoiser(config, config_path, leg)
    if leg.expired():
        return output
    return train_prompt_generator(config, config_path, leg)


@torch.no_grad()
def match_token_scale(prompt_generator, decoder) -> None:
    """Start soft prompts at the scale of the decoder's token embeddings, so they neither vanish nor dominate."""
    token_std = decoder.model.get_input_embeddings().weight.std()
    output_std = prompt_generator(torch.randn(64, prompt_generator.expand.in_features)).std()
    prompt_generator.to_decoder.weight.mul_(token_std / output_std)
    prompt_generator.to_decoder.bias.zero_()


def prompt_generator_loss(config: TrainConfig) -> str:
    t = config.prompt_generator
    anchor = (f" + {t.anchor_weight} x KL to the published decoder on {t.anchor_share:.0%} of steps"
              if t.anchor_share and t.anchor_weight else "")
    return (f"decoder cross-entropy per continuation token + {t.bag_of_words_weight} x bag-of-words "
            f"cross-entropy{anchor} (mean of the last 100 steps); the wall time also covers the {t.bag_of_words_steps} "
            "bag-of-words-only steps run first")


LOSS_DESCRIPTIONS = {
    "denoiser": lambda config: "v-prediction mean squared error (mean of the last 100 steps)",
    "prompt-generator": prompt_generator_loss,
}


def stage_card(stage: Stage, result: LoopResult) -> dict:
    config, accelerator, tail = stage.config, stage.accelerator, result.losses[-100:]
    on_cpu = f"CPU ({platform.processor() or platform.machine()})"
    device = torch.cuda.get_device_name() if accelerator.device.type == "cuda" else on_cpu
    return {
        "command": f"dglm train {stage.name} --config {stage.config_path}",
        "config": asdict(stage.settings),
        "data": f"{config.data.train} ({len(stage.pairs)} pairs)",
        "sources": dict(sorted(Counter(source_of(pair) for pair in stage.pairs).items())),
        **({"init_from": config.init_from} if config.init_from else {}),
        "device": f"{device} x{accelerator.num_processes}",
        "steps": result.steps,
        "wall_time_s": round(result.seconds),
        "final_loss": round(sum(tail) / len(tail), 4) if tail else None,
        "loss": LOSS_DESCRIPTIONS[stage.name](config),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }


def save_checkpoint(config: TrainConfig, parts, card: dict, adapter: dict | None = None) -> Path:
    from dglm.checkpoint import write_checkpoint

    return write_checkpoint(config.output_path, config.pipeline, parts, card, torch.float16, adapter)
