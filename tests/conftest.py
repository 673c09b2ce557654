"""Tiny random models for fast tests: a byte-level BPE tokenizer, a GPT-2 and a T5 sentence encoder.

They keep the paper's hub architectures (Sentence-T5 through sentence-transformers, GPT-2) tested
without a hub. Everything is built once per test session in a temporary folder.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

WORDS = (
    "the a movie film match team market company minister vote election phone software game player "
    "great good wonderful brilliant terrible awful boring bad dull happy sad win lose price shares "
    "government party music star show computer internet goal season profit loss was is were and but "
    "it this that very really not quite so of in on to with for by at from"
).split()

def free_port() -> int:
    """A localhost port that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(server: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    """Wait for `dglm serve` (its stderr in `log`) to say it is listening; fail with its log if it exits first or
    takes longer than `timeout` seconds, rather than wait forever."""
    deadline = time.monotonic() + timeout
    while "Uvicorn running on" not in log.read_text():
        assert server.poll() is None, f"the server exited:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"the server did not come up in {timeout:.0f} s:\n{log.read_text()}"
        time.sleep(0.2)


def run_two_processes(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 ARGS` on the CPU, one thread a process; it must exit 0."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
              *args]
    done = subprocess.run(launch, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


POSITIVE = ["great", "good", "wonderful", "brilliant", "happy"]
NEGATIVE = ["terrible", "awful", "boring", "bad", "dull"]


def copy_in_format_1(checkpoint: Path, folder: Path) -> dict:
    """A copy of `checkpoint` whose config.json is what dglm wrote before named samplers (format 1: one
    "sampling" section, always DDIM); returns that config."""
    shutil.copytree(checkpoint, folder)
    data = json.loads((folder / "config.json").read_text())
    assert data.pop("format_version") == 2
    data["sampling"] = {**data.pop("diffusion"), **data.pop("decoding")}
    del data["sampling"]["sampler"]
    (folder / "config.json").write_text(json.dumps(data))
    return data


def toy_sentences(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))).capitalize() + "." for _ in range(count)]


def toy_sentiment(count: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Sentences that say a positive or a negative word several times, with their label."""
    rng = random.Random(seed)
    texts, labels = [], []
    for index in range(count):
        label = "positive" if index % 2 else "negative"
        pool = POSITIVE if label == "positive" else NEGATIVE
        words = [rng.choice(pool) for _ in range(3)] + [rng.choice(WORDS) for _ in range(3)]
        rng.shuffle(words)
        texts.append("The movie was " + " ".join(words) + ".")
        labels.append(label)
    return texts, labels


def _tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(toy_sentences(500) + toy_sentiment(200)[0], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")
    fast.save_pretrained(folder)
    return fast


def build_tiny_models(root: Path) -> dict[str, Path]:
    """Folders of a tiny GPT-2 (decoder) and a tiny Sentence-T5-style encoder, both random, under `root`
    (also used by benchmarks that need models fast rather than good)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules
    from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    gpt2, t5, encoder = root / "gpt2", root / "t5", root / "sentence-t5"
    tokenizer = _tokenizer(gpt2)
    vocab = len(tokenizer)
    GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=2,
                               bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).save_pretrained(gpt2)
    T5EncoderModel(T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                            pad_token_id=tokenizer.pad_token_id)).save_pretrained(t5)
    tokenizer.save_pretrained(t5)
    transformer = modules.Transformer(str(t5), max_seq_length=64)
    layers = [transformer, modules.Pooling(transformer.get_embedding_dimension(), "mean"), modules.Normalize()]
    SentenceTransformer(modules=layers, device="cpu").save(str(encoder))
    return {"decoder": gpt2, "encoder": encoder}


def tiny_pipeline_config(models: dict[str, Path]):
    from dglm.config import DecodingSettings, DenoiserConfig, DiffusionSettings, PipelineConfig, PromptGeneratorConfig

    return PipelineConfig(
        encoder=str(models["encoder"]),
        decoder=str(models["decoder"]),
        latent_dim=32,
        decoder_dim=32,
        denoiser=DenoiserConfig(num_tokens=4, width=32, layers=2, heads=2, latent_token_width=8, prefix_token_width=8),
        prompt_generator=PromptGeneratorConfig(num_soft_prompts=2, width=32, layers=1, heads=2),
        diffusion=DiffusionSettings(steps=4, mc_draws=4),
        decoding=DecodingSettings(max_new_tokens=6),
    )


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_config(tiny_models):
    return tiny_pipeline_config(tiny_models)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_config):
    from dglm.pipeline import Pipeline

    torch.manual_seed(0)
    return Pipeline.from_config(tiny_config)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_pipeline, tmp_path_factory) -> Path:
    return tiny_pipeline.save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def toy_probe_dir(tiny_pipeline, tmp_path_factory) -> Path:
    """A `toy_sentiment` probe trained on the tiny encoder, saved as safetensors + card."""
    from dglm.attributes.probes import train_probe_on_texts

    texts, labels = toy_sentiment(120)
    probe = train_probe_on_texts("toy_sentiment", texts, labels, tiny_pipeline.encoder, data="toy sentences")
    folder = tmp_path_factory.mktemp("probes")
    probe.save(folder)
    return folder


@pytest.fixture
def toy_plugin(toy_probe_dir):
    """Register the toy probe in-process, as application code would, and remove it afterwards."""
    import dglm

    class ToyPlugin:
        @dglm.hookimpl
        def register_attributes(self, register):
            register(toy_probe_dir / "toy_sentiment.json")

    dglm.register_plugin(ToyPlugin(), name="toy")
    yield
    dglm.unregister_plugin("toy")
