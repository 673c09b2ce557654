"""Reading an attribute classifier's JSON card, a missing or broken file reported in one sentence (the linear probe
and the noise-conditioned classifier both read theirs this way)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dglm.errors import DglmError


def read_card(path: Path, what: str) -> Any:
    """The parsed JSON of the card at `path`; `what` names it in the errors ("probe card")."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DglmError(f"{what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DglmError(f"{what} {path} is not valid JSON ({error})") from None
