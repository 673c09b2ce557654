"""Loading a model through transformers quietly: a library's user sees dglm's own output, not transformers'
per-file loading bars and advice. Used only where transformers loads something; dglm's own forward passes (the
default models) load without importing it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence transformers' per-file loading bars and advice while dglm loads a model, and restore them after: a
    library's user sees dglm's own output only. DGLM_LOADING_BARS=1 keeps them."""
    from transformers.utils import logging as transformers_logging

    if os.environ.get("DGLM_LOADING_BARS") == "1":
        yield
        return
    bars, verbosity = transformers_logging.is_progress_bar_enabled(), transformers_logging.get_verbosity()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()
