"""The interfaces plugins implement: `Sampler` (a diffusion sampler) and `Method` (an evaluation method).

A leaf module: it imports nothing of the pipeline, so that the plugin registry can check what a plugin registers
against these classes without importing the modules that implement the built-in ones (those register through
the same entry-point group as any outside plugin).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from dglm.config_files import build_dataclass
from dglm.constraints import Constraint
from dglm.seeding import sample_generators


class Schedule(Protocol):
    """What a sampler reads of the noise schedule (`dglm.stages.schedule.CosineSchedule` is the built-in one)."""

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def logsnr(self, t: torch.Tensor) -> torch.Tensor: ...


class Sampler(ABC):
    """One noise-level update at a time, over times from 1 (pure noise) to 0 (clean)."""

    name: str = ""

    def __init__(self, schedule: Schedule):
        self.schedule = schedule
        self.timesteps = torch.empty(0)

    def set_timesteps(self, steps: int) -> None:
        """Lay out `steps` updates: `timesteps` holds steps + 1 times, from 1 down to 0."""
        self.timesteps = torch.linspace(1.0, 0.0, steps + 1)

    @abstractmethod
    def step(self, x0: torch.Tensor, index: int, z: torch.Tensor) -> torch.Tensor:
        """The latent at time `timesteps[index + 1]`, from `z` at `timesteps[index]` and its clean estimate `x0`."""


class Method(ABC):
    """An evaluation method: continues (prefix, seed) rows under constraints.

    A subclass names itself (`name`), declares its options as a typed dataclass (`Options`: each field with
    its type and default), and implements `continue_rows`. Options from an evaluation config are checked
    against the declaration, so a misspelt or mistyped option is refused instead of ignored. Plugins add
    methods through the `register_methods` hook.

    A method is built with the loaded `dglm.Pipeline` (`self.pipeline`: its encoder, decoders, guides and settings);
    it is typed `Any` here because this module sits below the pipeline and may not import it.
    """

    name: str = ""

    @dataclass
    class Options:
        pass

    def __init__(self, pipeline: Any, **options: Any):
        self.pipeline = pipeline
        self.options = build_dataclass(self.Options, options, f"options of method {self.name!r}")

    @abstractmethod
    def continue_rows(self, rows: list[tuple[str, int]], constraints: list[Constraint],
                      max_new_tokens: int) -> list[str]:
        """One continuation of at most `max_new_tokens` tokens per (prefix, seed) row."""

    def sample(self, prefixes: list[str], rows: list[tuple[str, int]], max_new_tokens: int,
               adjust_logits=None) -> list[str]:
        """Sample the decoder without soft prompts, each row from its own seed."""
        generators = sample_generators([seed for _, seed in rows])
        decoding = self.pipeline.config.decoding.updated(max_new_tokens=max_new_tokens)
        return self.pipeline.plain_decoder().generate(prefixes, None, generators, decoding, adjust_logits=adjust_logits)
