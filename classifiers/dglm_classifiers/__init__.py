"""The trained probes of the built-in attributes: NAME.safetensors with its NAME.json card."""

from pathlib import Path


def card_path(name: str) -> Path:
    return Path(__file__).parent / f"{name}.json"
