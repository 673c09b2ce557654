"""The wheel carries every subpackage, the built-in plugins and the bundled model: built and installed into a
fresh virtual environment, it generates."""

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # starts processes or builds a wheel: `-m "not slow"` skips it


def test_a_wheel_installed_in_a_fresh_environment_generates(tmp_path, tiny_checkpoint):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "wheel"), str(ROOT)],
                   check=True)
    (wheel,) = (tmp_path / "wheel").glob("dglm-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True)
    # The dependencies (torch, transformers, ...) come from this environment rather than a second download.
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    run = lambda *args: subprocess.run(args, capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    where = run(str(python), "-c", "import dglm, dglm.stages.samplers, dglm_plugins; print(dglm.__file__)")
    assert where.startswith(str(venv))  # the wheel's copy, not this checkout's
    attributes = run(str(venv / "bin" / "dglm"), "attributes", "--json")
    assert {row["name"] for row in json.loads(attributes)} >= {"sentiment", "topic"}
    generated = run(str(venv / "bin" / "dglm"), "generate", "The movie", "--model", str(tiny_checkpoint), "-n", "2",
                    "--seed", "0", "--format", "jsonl", "--sampler", "dpmsolver++")
    assert [json.loads(line)["seed"] for line in generated.splitlines()] == [0, 1]
