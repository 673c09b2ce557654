"""Long generation runs: written as they go, resumed after SIGKILL with nothing lost or repeated, refused when
resumed with other settings, and shared out over two processes with the same bytes as one."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_two_processes

from dglm.cli import main

RUN = ["-n", "2", "--seed", "0", "--batch-size", "2", "--max-new-tokens", "6"]


@pytest.fixture(scope="module")
def prefix_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run") / "prefixes.txt"
    path.write_text("\n".join(f"The movie number {i} was" for i in range(60)) + "\n\n")
    return path


@pytest.fixture(scope="module")
def whole(tiny_checkpoint, prefix_file) -> Path:
    """An uninterrupted one-process run: what every other way of running must reproduce byte for byte."""
    out = prefix_file.with_name("whole.jsonl")
    assert generate(command(tiny_checkpoint, prefix_file, out)) == 0
    return out


def generate(args: list[str]) -> int:
    return main(["generate", *args])


def command(checkpoint: Path, prefix_file: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(checkpoint), "--prefix-file", str(prefix_file), "--output", str(out), *RUN, *extra]


@pytest.mark.slow
def test_a_run_killed_midway_and_resumed_equals_an_uninterrupted_run(tiny_checkpoint, prefix_file, whole, tmp_path):
    killed = tmp_path / "killed.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "dglm", "generate", *command(tiny_checkpoint, prefix_file, killed)],
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not killed.is_file() or killed.read_bytes().count(b"\n") < 10:
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    held = killed.read_bytes().count(b"\n")
    assert 10 <= held < 120, "the kill did not land midway"
    assert generate(command(tiny_checkpoint, prefix_file, killed, "--resume")) == 0
    assert killed.read_bytes() == whole.read_bytes()
    records = [json.loads(line) for line in whole.read_text().splitlines()]
    assert [(r["prefix_index"], r["sample_index"], r["seed"]) for r in records] == [(k // 2, k % 2, k) for k in range(120)]


def test_an_unfinished_last_line_is_cut_off_and_the_run_continues(tiny_checkpoint, prefix_file, whole, tmp_path):
    cut = tmp_path / "cut.jsonl"
    lines = whole.read_bytes().splitlines(keepends=True)
    cut.write_bytes(b"".join(lines[:107]) + lines[107][:15])  # killed in the middle of writing line 8
    Path(str(cut) + ".settings.json").write_bytes(Path(str(whole) + ".settings.json").read_bytes())
    assert generate(command(tiny_checkpoint, prefix_file, cut, "--resume")) == 0
    assert cut.read_bytes() == whole.read_bytes()


def test_resuming_with_other_settings_or_a_foreign_file_is_refused(tiny_checkpoint, prefix_file, whole, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    out.write_bytes(whole.read_bytes())
    Path(str(out) + ".settings.json").write_bytes(Path(str(whole) + ".settings.json").read_bytes())
    assert generate(command(tiny_checkpoint, prefix_file, out, "--resume", "--temperature", "0.7")) == 2
    assert "--resume with other settings" in capsys.readouterr().err
    assert generate(command(tiny_checkpoint, prefix_file, out, "--resume", "--attr", "sentiment=positive")) == 2
    assert "attributes: [] then" in capsys.readouterr().err
    assert generate(command(tiny_checkpoint, prefix_file, out, "--resume", "--dtype", "bfloat16")) == 2
    assert "--resume needs --dtype float32" in capsys.readouterr().err
    assert generate(command(tiny_checkpoint, prefix_file, out)) == 2
    assert "already holds samples; pass --resume" in capsys.readouterr().err
    lines = out.read_text().splitlines()
    record = json.loads(lines[3])
    record["seed"] = 99
    out.write_text("\n".join(lines[:3] + [json.dumps(record)]) + "\n")
    assert generate(command(tiny_checkpoint, prefix_file, out, "--resume")) == 2
    assert "line 4 holds (prefix 1, sample 1, seed 99), but this run's sample 4 is (prefix 1, sample 1, seed 3)" \
        in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_write_the_same_file_as_one(tiny_checkpoint, prefix_file, whole, tmp_path):
    two = tmp_path / "two.jsonl"
    done = run_two_processes("-m", "dglm", "generate", *command(tiny_checkpoint, prefix_file, two))
    assert "dglm: sharded over 2 processes" in done.stderr
    assert two.read_bytes() == whole.read_bytes()


def test_generate_stream_is_lazy_and_equals_generate(tiny_pipeline):
    endless = itertools.cycle(["The movie", "A film"])
    first = list(itertools.islice(tiny_pipeline.generate_stream(endless, num_samples=2, seed=4, batch_size=3), 6))
    expected = tiny_pipeline.generate(["The movie", "A film", "The movie"], num_samples=2, seed=4)
    assert [(s.prefix, s.continuation, s.seed, s.prefix_index, s.sample_index) for s in first] == \
        [(s.prefix, s.continuation, s.seed, s.prefix_index, s.sample_index) for s in expected]
    resumed = list(tiny_pipeline.generate_stream(["The movie", "A film", "The movie"], num_samples=2, seed=4, skip=3))
    assert [s.continuation for s in resumed] == [s.continuation for s in expected[3:]]


@pytest.mark.slow
def test_prefixes_from_standard_input_piped_or_named_with_a_dash(tiny_checkpoint):
    run = lambda *args: subprocess.run([sys.executable, "-m", "dglm", "generate", "--model", str(tiny_checkpoint), "--seed", "0",
                                        "--max-new-tokens", "3", "--format", "jsonl", *args], input="The movie\n\nA film\n",
                                       capture_output=True, text=True, timeout=300, check=False)
    piped, dashed = run(), run("--prefix-file", "-")
    assert piped.returncode == 0 and dashed.returncode == 0, piped.stderr + dashed.stderr
    assert [json.loads(line)["prefix"] for line in piped.stdout.splitlines()] == ["The movie", "A film"]
    assert piped.stdout == dashed.stdout
    nothing = subprocess.run([sys.executable, "-m", "dglm", "generate", "--model", str(tiny_checkpoint)],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300, check=False)
    assert nothing.returncode == 2 and "give a PREFIX, --prefix-file FILE or --prefix-file -" in nothing.stderr
