"""The repository itself: a clone grows only when the bundled checkpoint (or a long run's insurance copy) changes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_FOLDERS = ("dglm/default/", "dglm/candidate/")
MOST_BYTES = 1_000_000


def tracked_files() -> list[str]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [name for name in listed.decode().split("\0") if name]


def test_no_file_over_1_mb_is_tracked_outside_the_checkpoint_folders():
    large = {name: (ROOT / name).stat().st_size for name in tracked_files()
             if (ROOT / name).is_file() and (ROOT / name).stat().st_size > MOST_BYTES}
    outside = {name: size for name, size in large.items() if not name.startswith(CHECKPOINT_FOLDERS)}
    assert not outside, (f"files over 1 MB outside {CHECKPOINT_FOLDERS}: {outside}; write sample files compressed "
                         "(.jsonl.gz) and keep training state under ~/.cache/dglm/runs")
