"""The one exception type users see: a plain sentence saying what was wrong and what is accepted."""


class DglmError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits non-zero."""
