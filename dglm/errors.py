"""The one exception type users see: a plain sentence saying what was wrong and what is accepted."""

from __future__ import annotations


class DglmError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits non-zero; `field` names the setting or
    input it is about, when there is one (the server's error `param`)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field
