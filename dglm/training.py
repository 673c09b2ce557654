"""Train the denoiser and the prompt generator from a YAML config (`dglm train`).

Both stages read prefix/continuation pairs (see `dglm data build`), encode them once with the frozen
encoder (cached in the run folder), and run through `accelerate`, so the same command works on a
CPU, one GPU, or several (`accelerate launch -m dglm train ...`). Each stage resumes from its last
state in the run folder and writes the pipeline checkpoint to `output` when it ends.
"""

from __future__ import annotations

import json
import math
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file

from dglm.config import PipelineConfig, build_dataclass
from dglm.errors import DglmError
from dglm.schedule import CosineSchedule, noise_to_level
from dglm.train_state import EMA, load_training_state, plot_losses, save_training_state


@dataclass
class DataConfig:
    train: str = "data/pairs-train.jsonl"
    max_pairs: int = 0  # 0: every pair


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
    warmup: int = 50
    alpha2_min: float = 0.7
    max_target_tokens: int = 20
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
        try:
            data = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise DglmError(f"training config {path} does not exist") from None
        except yaml.YAMLError as error:
            raise DglmError(f"training config {path} is not valid YAML ({str(error).splitlines()[0]})") from None
        return build_dataclass(cls, data or {}, str(path))


# ---- data ---------------------------------------------------------------------------------

def read_pairs(path: Path | str, limit: int = 0) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DglmError(f"training pairs {path} do not exist; build them with `dglm data build`")
    pairs = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            pairs.append(json.loads(line))
            if limit and len(pairs) >= limit:
                break
    return pairs


def encoded_pairs(config: TrainConfig, pairs: list[dict], is_main: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix and continuation embeddings, computed once and cached in the run folder (fp16)."""
    from dglm.encoder import SentenceEncoder

    cache = Path(config.run_dir) / f"embeddings-{len(pairs)}.safetensors"
    if not cache.is_file() and is_main:
        encoder = SentenceEncoder(config.pipeline.encoder)
        texts = [p["prefix"] for p in pairs] + [p["continuation"] for p in pairs]
        embeddings = encoder.encode(texts, batch_size=128, progress=True).half()
        save_file({"prefix": embeddings[: len(pairs)].contiguous(), "continuation": embeddings[len(pairs):].contiguous()}, str(cache))
    tensors = load_file(str(cache))
    return tensors["prefix"].float(), tensors["continuation"].float()


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


# ---- stages -------------------------------------------------------------------------------

def starting_parts(config: TrainConfig):
    """The output checkpoint's parts when it was trained with this pipeline config, else fresh ones."""
    from dglm.pipeline import TrainableParts, read_checkpoint

    parts, card = TrainableParts(config.pipeline), {}
    output = Path(config.output)
    if (output / "config.json").is_file():
        saved_config, state, card = read_checkpoint(output)
        if saved_config == config.pipeline:
            parts.load_state_dict({k: v.float() for k, v in state.items()})
        else:
            card = {}
    return parts, card


def train_denoiser(config: TrainConfig, config_path: str) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator()
    set_seed(config.seed)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t = config.denoiser
    with accelerator.main_process_first():
        prefix, continuation = encoded_pairs(config, read_pairs(config.data.train, config.data.max_pairs), accelerator.is_main_process)
    parts, card = starting_parts(config)
    parts.normalizer.fit(continuation)
    x_all, c_all = parts.normalizer.to_latent(continuation), parts.normalizer.to_latent(prefix)
    model = parts.denoiser
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.learning_rate, weight_decay=0.01)
    ema = EMA(model, t.ema_decay)
    state_path = run_dir / "denoiser-state"
    step, losses = load_training_state(state_path, model, optimizer, ema)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, t.warmup, t.steps), last_epoch=step - 1)
    model, optimizer = accelerator.prepare(model, optimizer)
    schedule = CosineSchedule(config.pipeline.schedule_shift)
    generator = torch.Generator().manual_seed(config.seed + step)
    start = time.time()
    from tqdm.auto import tqdm

    bar = tqdm(range(step, t.steps), initial=step, total=t.steps, desc="denoiser", disable=not accelerator.is_main_process)
    for step in bar:
        index = torch.randint(0, len(x_all), (t.batch_size,), generator=generator)
        x, c = x_all[index].to(accelerator.device), c_all[index].to(accelerator.device)
        times = torch.rand(t.batch_size, generator=generator).to(accelerator.device)
        alpha, sigma = (v[:, None] for v in schedule.alpha_sigma(times))
        logsnr = schedule.logsnr(times)
        noise = torch.randn(x.shape, generator=generator).to(accelerator.device)
        z = alpha * x + sigma * noise
        keep_prefix = torch.rand(t.batch_size, generator=generator).to(accelerator.device) >= t.prefix_dropout
        self_cond = None
        if random.Random(config.seed + step).random() < t.self_condition:
            with torch.no_grad():
                self_cond = alpha * z - sigma * model(z, logsnr, c, prefix_mask=keep_prefix)
        v = model(z, logsnr, c, self_cond=self_cond, prefix_mask=keep_prefix)
        loss = F.mse_loss(v, alpha * noise - sigma * x)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        ema.update(accelerator.unwrap_model(model))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if accelerator.is_main_process and (step + 1) % t.checkpoint_every == 0:
            save_training_state(state_path, accelerator.unwrap_model(model), optimizer, ema, step + 1, losses)
    if not accelerator.is_main_process:
        return Path(config.output)
    save_training_state(state_path, accelerator.unwrap_model(model), optimizer, ema, t.steps, losses)
    ema.copy_to(parts.denoiser)
    plot_losses(losses, run_dir / "denoiser-loss.png", "denoiser (v-prediction MSE)")
    card["denoiser"] = stage_card(config, config_path, "denoiser", losses, time.time() - start, len(x_all), accelerator)
    return save_checkpoint(config, parts, card)


def train_prompt_generator(config: TrainConfig, config_path: str) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from dglm.decoder import SoftPromptDecoder
    from dglm.models import load_causal_lm

    accelerator = Accelerator()
    set_seed(config.seed)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t = config.prompt_generator
    pairs = read_pairs(config.data.train, config.data.max_pairs)
    with accelerator.main_process_first():
        _, continuation = encoded_pairs(config, pairs, accelerator.is_main_process)
    parts, card = starting_parts(config)
    if "denoiser" not in card:
        raise DglmError(f"train the denoiser first: {config.output} has no denoiser trained with this config")
    model_lm, tokenizer = load_causal_lm(config.pipeline.decoder, device=str(accelerator.device))
    decoder = SoftPromptDecoder(model_lm, tokenizer, config.pipeline.decoder)
    latents = parts.normalizer.to_latent(continuation)
    model = parts.prompt_generator
    state_path = run_dir / "prompt-generator-state"
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.learning_rate, weight_decay=0.01)
    step, losses = load_training_state(state_path, model, optimizer, None)
    if step == 0:
        match_token_scale(model, decoder)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, t.warmup, t.steps), last_epoch=step - 1)
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(config.seed + step)
    start = time.time()
    from tqdm.auto import tqdm

    bar = tqdm(range(step, t.steps), initial=step, total=t.steps, desc="prompt generator", disable=not accelerator.is_main_process)
    for step in bar:
        index = torch.randint(0, len(pairs), (t.batch_size,), generator=generator)
        alpha2 = t.alpha2_min + (1 - t.alpha2_min) * torch.rand(t.batch_size, generator=generator)
        noise = torch.randn(t.batch_size, latents.shape[1], generator=generator)
        noisy = noise_to_level(latents[index], alpha2, noise).to(accelerator.device)
        batch = [pairs[i] for i in index.tolist()]
        soft_prompts = model(noisy)
        loss = decoder.loss([p["prefix"] for p in batch], [p["continuation"] for p in batch], soft_prompts, t.max_target_tokens)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        if accelerator.is_main_process and (step + 1) % t.checkpoint_every == 0:
            save_training_state(state_path, accelerator.unwrap_model(model), optimizer, None, step + 1, losses)
    if not accelerator.is_main_process:
        return Path(config.output)
    save_training_state(state_path, accelerator.unwrap_model(model), optimizer, None, t.steps, losses)
    parts.prompt_generator.load_state_dict(accelerator.unwrap_model(model).state_dict())
    plot_losses(losses, run_dir / "prompt-generator-loss.png", "prompt generator (decoder cross-entropy)", smooth=20)
    card["prompt_generator"] = stage_card(config, config_path, "prompt-generator", losses, time.time() - start, len(pairs), accelerator)
    return save_checkpoint(config, parts, card)


@torch.no_grad()
def match_token_scale(prompt_generator, decoder) -> None:
    """Start soft prompts at the scale of the decoder's token embeddings, so they neither vanish nor dominate."""
    token_std = decoder.model.get_input_embeddings().weight.std()
    output_std = prompt_generator(torch.randn(64, prompt_generator.expand.in_features)).std()
    prompt_generator.to_decoder.weight.mul_(token_std / output_std)
    prompt_generator.to_decoder.bias.zero_()


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
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }


def save_checkpoint(config: TrainConfig, parts, card: dict) -> Path:
    from dglm.pipeline import write_checkpoint

    return write_checkpoint(Path(config.output), config.pipeline, parts, card, dtype=torch.float16)
