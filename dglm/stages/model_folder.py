"""What a transformers model folder holds, read without loading it: its config and the names of its weights (what
`llama.fits` and `bert.fits` decide on)."""

from __future__ import annotations

import json
from pathlib import Path


def config_and_weight_names(folder: Path) -> tuple[dict, list[str]] | None:
    """The folder's `config.json` and the tensor names in its one `model.safetensors`; None when either is missing or
    unreadable (such a folder is left to transformers, whose error says what is wrong with it)."""
    from safetensors import safe_open

    try:
        config = json.loads((folder / "config.json").read_text())
        with safe_open(str(folder / "model.safetensors"), "pt") as weights:
            return config, list(weights.keys())
    except Exception:  # safetensors raises its own error type for a damaged file
        return None


def load_weights(folder: Path, device: str) -> dict:
    """The tensors of the folder's `model.safetensors`, on `device` (any form torch takes: "cpu:0" as well)."""
    import torch
    from safetensors.torch import load_file

    where = torch.device(device)
    return load_file(str(folder / "model.safetensors"), device="cpu" if where.type == "cpu" else str(where))
