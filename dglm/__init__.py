"""dglm: controllable text generation with Diffusion Guided Language Modeling."""

from dglm.config import PipelineConfig
from dglm.errors import DglmError
from dglm.hookspecs import hookimpl
from dglm.pipeline import Pipeline, Sample
from dglm.plugins import get_attributes, get_plugins, register_plugin, unregister_plugin
from dglm.stages.guidance import Constraint

__all__ = [
    "Constraint",
    "DglmError",
    "Pipeline",
    "PipelineConfig",
    "Sample",
    "get_attributes",
    "get_plugins",
    "hookimpl",
    "register_plugin",
    "unregister_plugin",
]
__version__ = "0.1.0"
