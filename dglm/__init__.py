"""dglm: controllable text generation with Diffusion Guided Language Modeling.

The names below are imported when first used (PEP 562), so that `import dglm` in a plugin, or `dglm --help`, does not
pay for torch and transformers (about two seconds on a 2-core CPU)."""

from importlib import import_module
from typing import Any

from dglm.errors import DglmError
from dglm.hookspecs import hookimpl

_LAZY = {
    "Constraint": "dglm.constraints",
    "Pipeline": "dglm.pipeline",
    "PipelineConfig": "dglm.config",
    "Sample": "dglm.pipeline",
    "get_attributes": "dglm.plugins",
    "get_plugins": "dglm.plugins",
    "register_plugin": "dglm.plugins",
    "unregister_plugin": "dglm.plugins",
}

__all__ = ["DglmError", "hookimpl", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dglm' has no attribute {name!r}")
