"""Train the denoiser and the prompt generator from a YAML config (`dglm train`).

Both stages read prefix/continuation pairs (see `dglm data build`), encode them once with the frozen
encoder (cached in the run folder), and run through `accelerate`, so the same command works on a
CPU, one GPU, or several (`accelerate launch -m dglm train ...`). Each stage resumes from its last
state in the run folder and writes the pipeline checkpoint to `output` when it ends.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import platform
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from safetensors.torch import load_file, save_file

from dglm.config import PipelineConfig, load_yaml
from dglm.errors import DglmError
from dglm.schedule import CosineSchedule, noise_to_level
from dglm.train_state import EMA, load_training_state, plot_losses, save_training_state


@dataclass
class DataConfig:
    train: str = "data/pairs-train.jsonl"
    max_pairs: int = 0  # 0: every pair
    all_pairs_from: list[str] = field(default_factory=list)  # sources kept whole, past max_pairs


@dataclass
class DenoiserTraining:
    steps: int = 6000
    batch_size: int = 256
    learning_rate: float = 5e-4
    warmup: int = 200
    ema_decay: float = 0.999
    prefix_dropout: float = 0.1
    self_condition: float = 0.5
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
    source_weights: dict[str, float] = field(default_factory=dict)  # how often a pair is drawn, by its source (default 1)
    checkpoint_every: int = 100


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    output: str = "runs/default/checkpoint"
    seed: int = 0
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    data: DataConfig = field(default_factory=DataConfig)
    denoiser: DenoiserTraining = field(default_factory=DenoiserTraining)
    prompt_generator: PromptGeneratorTraining = field(default_factory=PromptGeneratorTraining)

    @classmethod
    def from_yaml(cls, path: Path | str) -> "TrainConfig":
        return load_yaml(cls, path, "training")


# ---- data ---------------------------------------------------------------------------------

def iter_pairs(path: Path | str) -> Iterator[dict]:
    """Stream prefix/continuation pairs from a JSONL file, for passes that need not hold them all."""
    path = Path(path)
    if not path.is_file():
        raise DglmError(f"training pairs {path} do not exist; build them with `dglm data build`")
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


def read_pairs(path: Path | str, limit: int = 0) -> list[dict]:
    return list(itertools.islice(iter_pairs(path), limit or None))


def select_pairs(data: DataConfig) -> list[dict]:
    """The first `max_pairs` training pairs, plus every later pair from the sources in `all_pairs_from`.

    Lets a CPU-sized run keep all of a small, valuable source (the movie reviews) without encoding the
    whole corpus.
    """
    pairs, sources = [], set()
    for index, pair in enumerate(iter_pairs(data.train)):
        source = source_of(pair)
        sources.add(source)
        if not data.max_pairs or index < data.max_pairs or source in data.all_pairs_from:
            pairs.append(pair)
    refuse_unknown_sources("all_pairs_from", data.all_pairs_from, sources, f"{data.train} has")
    return pairs


def source_of(pair: dict) -> str:
    """The corpus source a pair came from; pairs without one share the name "(none)"."""
    return pair.get("source", "(none)")


def refuse_unknown_sources(option: str, asked: Iterable[str], known: set[str], holder: str) -> None:
    unknown = sorted(set(asked) - known)
    if unknown:
        raise DglmError(f"{option} names unknown source(s) {unknown}; {holder}: {sorted(known)}")


def encoded_pairs(config: TrainConfig, pairs: list[dict], is_main: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix and continuation embeddings, computed once and cached in the run folder (fp16).

    The cache's name holds a digest of the texts and the encoder, so another selection of pairs never
    reads embeddings that belong to a different one.
    """
    from dglm.encoder import SentenceEncoder

    digest = hashlib.sha256(config.pipeline.encoder.encode())
    for pair in pairs:
        digest.update(f"{pair['prefix']}\0{pair['continuation']}\0".encode())
    cache = Path(config.run_dir) / f"embeddings-{len(pairs)}-{digest.hexdigest()[:12]}.safetensors"
    if not cache.is_file() and is_main:
        encoder = SentenceEncoder(config.pipeline.encoder)
        texts = [p["prefix"] for p in pairs] + [p["continuation"] for p in pairs]
        embeddings = encoder.encode(texts, batch_size=128, progress=True).half()
        save_file({"prefix": embeddings[: len(pairs)].contiguous(), "continuation": embeddings[len(pairs):].contiguous()}, str(cache))
    tensors = load_file(str(cache))
    return tensors["prefix"].float(), tensors["continuation"].float()


def pair_weights(pairs: list[dict], source_weights: dict[str, float]) -> torch.Tensor | None:
    """Per-pair sampling weights from per-source weights (None when every source weighs the same).

    Lets a stage see some sources more often, e.g. sentiment-bearing reviews, without rebuilding the corpus.
    """
    if not source_weights:
        return None
    sources = [source_of(p) for p in pairs]
    refuse_unknown_sources("source_weights", source_weights, set(sources), "the training pairs have")
    if any(not isinstance(w, (int, float)) or w <= 0 for w in source_weights.values()):
        raise DglmError(f"source_weights must be positive numbers, got {source_weights}")
    return torch.tensor([float(source_weights.get(source, 1.0)) for source in sources])


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


# ---- stages -------------------------------------------------------------------------------

def starting_parts(config: TrainConfig):
    """The output checkpoint's parts, card and decoder adapter when it was trained with this pipeline config,
    else fresh parts, an empty card and no adapter."""
    from dglm.adapter import split_adapter
    from dglm.pipeline import TrainableParts, read_checkpoint

    parts, card, adapter = TrainableParts(config.pipeline), {}, {}
    output = Path(config.output)
    if (output / "config.json").is_file():
        saved_config, state, card = read_checkpoint(output)
        if saved_config == config.pipeline:
            state, adapter = split_adapter(state)
            parts.load_state_dict({k: v.float() for k, v in state.items()})
        else:
            card = {}
    return parts, card, adapter


def run_loop(accelerator, model, optimizer, stage: str, steps: int, warmup: int, checkpoint_every: int,
             state_path: Path, batch_loss, seed: int, ema: EMA | None = None) -> tuple[list[float], float]:
    """The shared optimisation loop: resume, warm-up + cosine learning rate, clipping, EMA, periodic states.

    Returns every step's loss and the training time in seconds, summed over resumed segments.

    `batch_loss(model, generator)` draws a batch and returns its loss; the generator is seeded from the
    seed, the starting step and the process, so a resumed run continues with fresh batches and each GPU
    draws its own.
    """
    from tqdm.auto import tqdm

    step, losses, earlier_seconds = load_training_state(state_path, model, optimizer, ema)
    start = time.time()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, steps), last_epoch=step - 1)
    prepared_model, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator().manual_seed((seed * 1_000_003 + step) * 1024 + accelerator.process_index)
    bar = tqdm(range(step, steps), initial=step, total=steps, desc=stage, disable=not accelerator.is_main_process)
    for step in bar:
        loss = batch_loss(prepared_model, generator)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(prepared_model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(accelerator.unwrap_model(prepared_model))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if accelerator.is_main_process and (step + 1) % checkpoint_every == 0:
            save_training_state(state_path, accelerator.unwrap_model(prepared_model), optimizer, ema, step + 1, losses,
                                earlier_seconds + time.time() - start)
    seconds = earlier_seconds + time.time() - start
    if accelerator.is_main_process:
        save_training_state(state_path, accelerator.unwrap_model(prepared_model), optimizer, ema, steps, losses, seconds)
    return losses, seconds


def prepare_stage(config: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator()
    set_seed(config.seed)
    Path(config.run_dir).mkdir(parents=True, exist_ok=True)
    pairs = select_pairs(config.data)
    with accelerator.main_process_first():
        prefix, continuation = encoded_pairs(config, pairs, accelerator.is_main_process)
    return accelerator, pairs, prefix, continuation


def finish_stage(config, config_path, accelerator, stage, parts, card, losses, seconds, pairs, adapter=None) -> Path:
    """Plot the losses, record the stage in the model card and write the checkpoint (main process only)."""
    if not accelerator.is_main_process:
        return Path(config.output)
    key = stage.replace("-", "_")
    plot_losses(losses, Path(config.run_dir) / f"{stage}-loss.png", f"{stage} loss")
    card[key] = stage_card(config, config_path, stage, losses, seconds, pairs, accelerator)
    return save_checkpoint(config, parts, card, adapter)


def train_denoiser(config: TrainConfig, config_path: str) -> Path:
    """v-prediction MSE on continuation latents, conditioned on prefix latents (dropped 10% for CFG)."""
    t = config.denoiser
    accelerator, pairs, prefix, continuation = prepare_stage(config)
    parts, card, adapter = starting_parts(config)
    parts.normalizer.fit(continuation)
    x_all, c_all = parts.normalizer.to_latent(continuation), parts.normalizer.to_latent(prefix)
    schedule = CosineSchedule(config.pipeline.schedule_shift)
    device = accelerator.device

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
        return F.mse_loss(v, alpha * noise - sigma * x)

    optimizer = torch.optim.AdamW(parts.denoiser.parameters(), lr=t.learning_rate, weight_decay=0.01)
    ema = EMA(parts.denoiser, t.ema_decay)
    losses, seconds = run_loop(accelerator, parts.denoiser, optimizer, "denoiser", t.steps, t.warmup, t.checkpoint_every,
                      Path(config.run_dir) / "denoiser-state", batch_loss, config.seed, ema)
    ema.copy_to(parts.denoiser)
    return finish_stage(config, config_path, accelerator, "denoiser", parts, card, losses, seconds, len(pairs), adapter)


class PromptGeneratorStage(nn.Module):
    """What the prompt-generator stage optimises: the prompt generator and the decoder's LoRA weights.

    The decoder is held as a plain attribute, outside the module tree, so training states (and DDP on
    several GPUs) see only the trainable weights; its adapter parameters are registered here too.
    """

    def __init__(self, prompt_generator: nn.Module, decoder, max_target_tokens: int, decoder_weight: float,
                 bag_of_words_weight: float):
        super().__init__()
        self.prompt_generator = prompt_generator
        self.decoder = decoder
        self.adapter = nn.ParameterList([p for p in decoder.model.parameters() if p.requires_grad])
        self.max_target_tokens = max_target_tokens
        self.decoder_weight, self.bag_of_words_weight = decoder_weight, bag_of_words_weight

    def forward(self, noisy_latents: torch.Tensor, prefixes: list[str], continuations: list[str]) -> torch.Tensor:
        """Weighted sum of the decoder's cross-entropy of the continuations and the bag-of-words loss."""
        soft_prompts = self.prompt_generator(noisy_latents)
        loss = torch.zeros((), device=soft_prompts.device)
        if self.decoder_weight:
            loss = loss + self.decoder_weight * self.decoder.loss(prefixes, continuations, soft_prompts, self.max_target_tokens)
        if self.bag_of_words_weight:
            loss = loss + self.bag_of_words_weight * self.decoder.bag_of_words_loss(continuations, soft_prompts,
                                                                                    self.max_target_tokens)
        return loss


def train_prompt_generator(config: TrainConfig, config_path: str) -> Path:
    """Decoder cross-entropy of the true continuation given soft prompts from its re-noised latent.

    With `bag_of_words_steps`, the prompt generator first learns, alone and at a large batch, to put the
    continuation's words into its soft prompts (no pass through the decoder, so ~20x cheaper per example);
    the joint training with the decoder then starts from prompts the decoder can already read.
    """
    from dglm.adapter import add_adapter, adapter_state
    from dglm.decoder import SoftPromptDecoder
    from dglm.models import load_causal_lm

    t = config.prompt_generator
    accelerator, pairs, _, continuation = prepare_stage(config)
    parts, card, _ = starting_parts(config)
    if "denoiser" not in card:
        raise DglmError(f"train the denoiser first: {config.output} has no denoiser trained with this config")
    model_lm, tokenizer = load_causal_lm(config.pipeline.decoder, device=str(accelerator.device))
    model_lm.requires_grad_(False)
    adapter = add_adapter(model_lm, config.pipeline.decoder_adapter) if config.pipeline.decoder_adapter.rank else []
    decoder = SoftPromptDecoder(model_lm, tokenizer, config.pipeline.decoder)
    latents = parts.normalizer.to_latent(continuation)
    run_dir = Path(config.run_dir)
    weights = pair_weights(pairs, t.source_weights)

    def batches_of(size: int):
        def batch_loss(model, generator):
            if weights is None:
                index = torch.randint(0, len(pairs), (size,), generator=generator)
            else:
                index = torch.multinomial(weights, size, replacement=True, generator=generator)
            alpha2 = t.alpha2_min + (1 - t.alpha2_min) * torch.rand(size, generator=generator)
            noise = torch.randn(size, latents.shape[1], generator=generator)
            batch = [pairs[i] for i in index.tolist()]
            return model(noise_to_level(latents[index], alpha2, noise).to(accelerator.device),
                         [p["prefix"] for p in batch], [p["continuation"] for p in batch])
        return batch_loss

    match_token_scale(parts.prompt_generator, decoder)  # a fresh start only: a saved state overrides it
    words_seconds = 0.0
    if t.bag_of_words_steps:
        words = PromptGeneratorStage(parts.prompt_generator, decoder, t.max_target_tokens, 0.0, 1.0)
        optimizer = torch.optim.AdamW(parts.prompt_generator.parameters(), lr=t.learning_rate, weight_decay=0.01)
        words_losses, words_seconds = run_loop(
            accelerator, words, optimizer, "prompt-generator (bag of words)", t.bag_of_words_steps, t.warmup,
            t.checkpoint_every, run_dir / "prompt-generator-words-state", batches_of(t.bag_of_words_batch_size), config.seed)
        if accelerator.is_main_process:
            plot_losses(words_losses, run_dir / "prompt-generator-words-loss.png", "prompt generator: bag-of-words loss")
    stage = PromptGeneratorStage(parts.prompt_generator, decoder, t.max_target_tokens, 1.0, t.bag_of_words_weight)
    groups = [{"params": list(parts.prompt_generator.parameters()), "lr": t.learning_rate}]
    if adapter:
        groups.append({"params": adapter, "lr": t.adapter_learning_rate})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    losses, seconds = run_loop(accelerator, stage, optimizer, "prompt-generator", t.steps, t.warmup, t.checkpoint_every,
                               run_dir / "prompt-generator-state", batches_of(t.batch_size), config.seed)
    return finish_stage(config, config_path, accelerator, "prompt-generator", parts, card, losses, words_seconds + seconds,
                        len(pairs), adapter_state(model_lm) if adapter else None)


@torch.no_grad()
def match_token_scale(prompt_generator, decoder) -> None:
    """Start soft prompts at the scale of the decoder's token embeddings, so they neither vanish nor dominate."""
    token_std = decoder.model.get_input_embeddings().weight.std()
    output_std = prompt_generator(torch.randn(64, prompt_generator.expand.in_features)).std()
    prompt_generator.to_decoder.weight.mul_(token_std / output_std)
    prompt_generator.to_decoder.bias.zero_()


LOSS_DESCRIPTIONS = {
    "denoiser": lambda config: "v-prediction mean squared error (mean of the last 100 steps)",
    "prompt-generator": lambda config: (
        f"decoder cross-entropy per continuation token + {config.prompt_generator.bag_of_words_weight} x bag-of-words "
        f"cross-entropy (mean of the last 100 steps); the wall time also covers the "
        f"{config.prompt_generator.bag_of_words_steps} bag-of-words-only steps run first"),
}


def stage_card(config, config_path, stage, losses, seconds, pairs, accelerator) -> dict:
    tail = losses[-100:]
    device = torch.cuda.get_device_name() if accelerator.device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    return {
        "command": f"dglm train {stage} --config {config_path}",
        "config": asdict(getattr(config, stage.replace("-", "_"))),
        "data": f"{config.data.train} ({pairs} pairs)",
        "device": f"{device} x{accelerator.num_processes}",
        "steps": len(losses),
        "wall_time_s": round(seconds),
        "final_loss": round(sum(tail) / len(tail), 4),
        "loss": LOSS_DESCRIPTIONS[stage](config),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }


def save_checkpoint(config: TrainConfig, parts, card: dict, adapter: dict | None = None) -> Path:
    from dglm.pipeline import write_checkpoint

    return write_checkpoint(Path(config.output), config.pipeline, parts, card, torch.float16, adapter)
