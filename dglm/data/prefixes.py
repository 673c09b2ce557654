"""Prefix files: one prefix a line, for `dglm generate --prefix-file` and the evaluation alike."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dglm.errors import DglmError


def iter_prefixes(path: Path | str) -> Iterator[str]:
    """The non-empty lines of a prefixes file, stripped of surrounding whitespace, read lazily (memory stays flat
    however long the file is). Blank lines are skipped, so a prefix's index (from 0) counts prefixes, not lines;
    messages give line numbers from 1, as editors do. A file that is missing, a folder, binary, not UTF-8 or has no
    prefix at all is refused."""
    path = Path(path)
    if path.is_dir():
        raise DglmError(f"prefix file {path} is a folder; give a text file with one prefix a line")
    if not path.is_file():
        raise DglmError(f"prefix file {path} does not exist")
    found = False
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, 1):
            if b"\0" in raw:
                raise DglmError(f"prefix file {path} looks binary (a NUL byte on line {number}, counting from 1); give "
                                "one prefix a line, in UTF-8")
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as error:
                raise DglmError(f"prefix file {path} is not UTF-8 text (line {number}, counting from 1; byte "
                                f"{error.start}); give one prefix a line, in UTF-8") from None
            if line:
                found = True
                yield line
    if not found:
        raise DglmError(f"prefix file {path} has no prefix: every line is empty; give one prefix a line")


def read_prefixes(path: Path | str) -> list[str]:
    return list(iter_prefixes(path))


def count_prefixes(path: Path | str) -> int:
    """How many prefixes `iter_prefixes` will give, counted without keeping them (for a progress bar)."""
    return sum(1 for _ in iter_prefixes(path))


def stdin_is_piped() -> bool:
    """Whether standard input is a pipe or a file (`echo ... | dglm generate`, `< prefixes.txt`), not a terminal,
    /dev/null or nothing at all."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):  # no stdin, or one without a file descriptor (a test harness)
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def spool_stdin() -> Path:
    """Standard input copied to a temporary file (removed at exit), which is read like any prefix file: a pipe can be
    read only once, and the prefixes are read twice (counted for the progress bar, then continued)."""
    import atexit

    with tempfile.NamedTemporaryFile("wb", prefix="dglm-stdin-", suffix=".txt", delete=False) as spool:
        shutil.copyfileobj(sys.stdin.buffer, spool)
    atexit.register(os.unlink, spool.name)
    return Path(spool.name)
