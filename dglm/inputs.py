"""Checks on what a user hands in (prefixes, counts, seeds, stop strings, any text), made before any model runs, so
that a bad input ends in one sentence saying what was wrong and what is accepted. The CLI, the server and the
Python API all call these; prefixes are counted from 0 in every message, as in the output."""

from __future__ import annotations

from typing import Any

from dglm.errors import DglmError

MAX_SEED = 2**63 - 1  # torch generators take 64 bits, and a negative seed would repeat another's stream
MAX_NUM_SAMPLES = 10_000  # a prefix's continuations in one call: about four hours of a 2-core CPU at batch 25
MAX_BATCH_SIZE = 4_096  # far past where batching stops paying on a CPU or one GPU


def unicode_problem(text: str, argument: bool = True) -> str | None:
    """Why `text` is not valid Unicode (a lone surrogate, as bytes that are not UTF-8 arrive in a command-line
    `argument`, or as JSON's "\\ud800" does), or None. A tokenizer cannot take such text."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        if argument and 0xDC80 <= code <= 0xDCFF:  # Python's stand-in for a byte that was not UTF-8 (surrogateescape)
            return f"the byte 0x{code - 0xDC00:02x} at character {error.start} is not UTF-8"
        return f"character {error.start} is a lone surrogate (\\u{code:04x}), which is not Unicode text"


def check_text(value: Any, what: str, field: str | None = None) -> str:
    """`value` if it is a non-empty string of valid Unicode; else a DglmError naming `what`."""
    if not isinstance(value, str) or not value.strip():
        raise DglmError(f"{what} must be non-empty text, got {value!r}", field=field)
    problem = unicode_problem(value)
    if problem:
        raise DglmError(f"{what} is not valid text: {problem}; give UTF-8 text", field=field)
    return value


def check_prefix(index: int, text: Any, noun: str = "prefix") -> None:
    """Prefix `index` (from 0, as in the output) must be non-empty, valid text; `noun` is what the caller calls a
    prefix (a server's "prompt")."""
    if not isinstance(text, str) or not text.strip():
        raise DglmError(f"{noun} {index} (counting from 0) is empty; every {noun} needs some text to continue",
                        field="prefix")
    check_text(text, f"{noun} {index} (counting from 0)", field="prefix")


def check_counts(num_samples: int, batch_size: int, seed: int | None) -> None:
    """Counts must be positive integers small enough to run; the seed must be one torch takes."""
    for name, value, most in (("num_samples", num_samples, MAX_NUM_SAMPLES),
                              ("batch_size", batch_size, MAX_BATCH_SIZE)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
            raise DglmError(f"{name} must be an integer from 1 to {most}, got {value!r}", field=name)
    check_seed(seed, 1)


def check_seed(seed: int | None, samples: int) -> None:
    """A seed must leave room for `samples` consecutive seeds (sample k uses seed + k) below torch's limit."""
    most = MAX_SEED - (samples - 1)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= most):
        needs = f" for {samples} samples" if samples > 1 else ""
        raise DglmError(f"seed must be an integer from 0 to {most}{needs} (or None for a random one), got {seed!r}",
                        field="seed")


def check_generation_inputs(prefixes: list[str], num_samples: int, batch_size: int, seed: int | None) -> None:
    """Reject bad prefixes and counts before any model runs (`generate`, the CLI and the server; the settings check
    themselves; `generate_stream` checks a prefix, and the seed it needs, as it reads it)."""
    if not prefixes:
        raise DglmError("no prefix given; pass a prefix string or a non-empty list of prefixes", field="prefix")
    for index, text in enumerate(prefixes):
        check_prefix(index, text)
    check_counts(num_samples, batch_size, seed)
    check_seed(seed, len(prefixes) * num_samples)


def stop_strings(stop: str | list[str] | None, most: int | None = None) -> list[str]:
    """Stop strings as a list: None, one string or several (at most `most`), none of them empty."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if not all(isinstance(text, str) and text for text in stops) or (most is not None and len(stops) > most):
        limit = f"at most {most} " if most is not None else ""
        raise DglmError(f"stop must be a string or a list of {limit}non-empty strings, got {stop!r}", field="stop")
    for text in stops:
        problem = unicode_problem(text)
        if problem:
            raise DglmError(f"stop string {text!r} is not valid text: {problem}; give UTF-8 text", field="stop")
    return stops


def first_stop(text: str, stops: list[str]) -> int | None:
    """Where the earliest stop string starts in `text`, or None."""
    found = [at for at in (text.find(stop) for stop in stops) if at >= 0]
    return min(found) if found else None


def cut_at_stop(text: str, stops: list[str]) -> str:
    """`text` up to the first stop string it holds."""
    at = first_stop(text, stops)
    return text if at is None else text[:at]


def check_device(device: str) -> None:
    """Refuse a device torch does not know, or one this machine lacks, before any model loads (a model would fail
    deep inside, in words about whichever model loaded first)."""
    import torch

    try:
        where = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise DglmError(f"device {device!r} is not one torch knows; give cpu, cuda or cuda:N (an NVIDIA GPU), or mps "
                        "(Apple silicon)", field="device") from None
    counts = {"cpu": 1, "cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
              "mps": int(torch.backends.mps.is_available())}
    count = counts.get(where.type, 1)  # other kinds (xpu, ...) are left to torch
    if not count:
        raise DglmError(f"device {device!r}: this machine has no {where.type} device; use cpu", field="device")
    if where.index is not None and where.index >= count:
        raise DglmError(f"device {device!r}: this machine has {count} {where.type} device(s), numbered from 0",
                        field="device")
