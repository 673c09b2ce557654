"""The plugin hooks. A plugin is any package with a `dglm` entry point that implements them."""

from __future__ import annotations

from typing import Callable

import pluggy

ENTRY_POINT_GROUP = "dglm"  # the entry-point group plugin packages declare

hookspec = pluggy.HookspecMarker("dglm")
hookimpl = pluggy.HookimplMarker("dglm")


@hookspec
def register_attributes(register: Callable) -> None:
    """Register attributes by calling ``register(card_path)`` once per probe card (a JSON file
    written by ``dglm classifier train``, next to its safetensors weights)."""


@hookspec
def register_samplers(register: Callable) -> None:
    """Register samplers by calling ``register(SamplerClass)`` once per sampler: a subclass of
    ``dglm.interfaces.Sampler`` whose ``name`` (what ``--sampler`` takes) no other sampler uses."""


@hookspec
def register_methods(register: Callable) -> None:
    """Register evaluation methods for `dglm eval` by calling ``register(MethodClass)`` once per method: a
    subclass of ``dglm.interfaces.Method`` with a unique ``name``, its options declared in ``Options``."""
