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


def __getattr__(name: str) -> Any:
    if name == "__version__":  # the installed distribution's, so that it cannot drift from pyproject.toml
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("dglm")
        except PackageNotFoundError:  # run from a source tree that was never installed
            return "unknown (not installed)"
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dglm' has no attribute {name!r}")
