"""scripts/train-gpu.sh proved on the CPU at a smoke size: packed in pieces of at most 64 MiB, trained from the
pieces alone, brought back as at most 8 files of at most 16 MiB, and rebuilt into a checkpoint that generates."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import toy_sentences

from dglm import Pipeline

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "train-gpu.sh"


def run(*args: str, **env: str) -> None:
    done = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, check=False, timeout=1200,
                          env={**os.environ, "PYTHON": sys.executable, **env})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def test_the_gpu_script_packs_trains_from_pieces_and_brings_back_small_files(tmp_path):
    pairs = tmp_path / "pairs.jsonl"  # a stand-in corpus: the smoke run reads 64 pairs
    pairs.write_text("".join(json.dumps({"prefix": s[:12], "continuation": " " + s[12:], "source": "toy"}) + "\n"
                             for s in toy_sentences(200)))
    smoke = tmp_path / "smoke.yaml"
    smoke.write_text(yaml.safe_dump({
        "extends": str(REPO / "configs" / "train-gpu.yaml"), "run_dir": "runs/smoke", "output": "runs/smoke/checkpoint",
        "data": {"max_pairs": 64, "all_pairs_from": []},
        "denoiser": {"steps": 2, "batch_size": 8, "warmup": 1, "checkpoint_every": 1},
        "prompt_generator": {"steps": 2, "batch_size": 2, "warmup": 1, "bag_of_words_steps": 1,
                             "bag_of_words_batch_size": 4, "checkpoint_every": 1},
    }))
    run("pack", str(tmp_path / "pieces"), PAIRS=str(pairs))
    pieces = sorted((tmp_path / "pieces").iterdir())
    assert len(pieces) >= 2 and all(p.stat().st_size <= 64 * 2**20 for p in pieces)
    run("train", str(tmp_path / "pieces"), str(tmp_path / "out"), CONFIG=str(smoke), MINUTES="10")
    out = sorted((tmp_path / "out").iterdir())
    assert len(out) <= 8 and all(f.stat().st_size <= 16 * 2**20 for f in out), [(f.name, f.stat().st_size) for f in out]
    assert {"checkpoint.json", "train.log", "denoiser-loss.png", "prompt-generator-loss.png"} <= {f.name for f in out}
    run("join", str(tmp_path / "out"), str(tmp_path / "checkpoint"))
    assert (tmp_path / "checkpoint" / "model.safetensors").stat().st_size < 40e6  # the GPU config's sizes
    pipeline = Pipeline.from_pretrained(tmp_path / "checkpoint")
    assert pipeline.card["prompt_generator"]["steps"] == 2
    assert len(pipeline.generate("The movie", num_samples=2, seed=0, max_new_tokens=3)) == 2
