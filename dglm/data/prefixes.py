"""Prefix files: one prefix a line, for `dglm generate --prefix-file` and the evaluation alike."""

from __future__ import annotations

from pathlib import Path

from dglm.errors import DglmError


def read_prefixes(path: Path | str) -> list[str]:
    """The non-empty lines of a prefixes file, stripped of surrounding whitespace, one prefix each."""
    path = Path(path)
    if not path.is_file():
        raise DglmError(f"prefix file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DglmError(f"prefix file {path} is not UTF-8 text (byte {error.start}); give one prefix a line, in UTF-8") from None
    return [line.strip() for line in text.splitlines() if line.strip()]
