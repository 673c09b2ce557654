"""What a request may ask, checked without a model: `check_request` runs in `Pipeline.plan`, and the CLI runs it
before loading the model, so that a bad request fails in a fraction of a second."""

from __future__ import annotations

from typing import Any

from dglm.config import check_setting, declared_settings
from dglm.constraints import Constraint
from dglm.errors import DglmError
from dglm.inputs import check_counts, stop_strings
from dglm.plugins import attribute_terms, get_sampler
from dglm.stages.guidance import check_guidance_classifier, check_guidance_mode

SETTINGS = declared_settings()


def check_request(constraints: list[Constraint], settings: dict[str, Any], num_samples: int = 1, batch_size: int = 1,
                  seed: int | None = None, stop: str | list[str] | None = None) -> list[str]:
    """Everything about a request that needs no model: the attributes are registered (with their labels), the
    settings' values are in range, the counts and seed can run, and the stop strings are text (returned as a list).
    `plan` runs it, and the CLI runs it before loading the model, so that a bad request fails in a fraction of a
    second rather than after the model's seconds of loading."""
    attribute_terms(constraints)
    check_setting_values(settings)
    check_counts(num_samples, batch_size, seed)
    return stop_strings(stop)


def check_setting_values(overrides: dict[str, Any]) -> None:
    """Check the given settings' names and values (None: not given) without a checkpoint: ranges, sampler and mode
    names."""
    unknown = sorted(set(overrides) - set(SETTINGS))
    if unknown:
        raise DglmError(f"unknown generation setting(s) {unknown}; settings: {', '.join(SETTINGS)}")
    for name, value in overrides.items():
        if value is not None:
            _, spec, kind = SETTINGS[name]
            check_setting(spec, kind, value)
    if overrides.get("sampler") is not None:
        get_sampler(overrides["sampler"])
    if overrides.get("guidance_mode") is not None:
        check_guidance_mode(overrides["guidance_mode"])
    if overrides.get("guidance_classifier") is not None:
        check_guidance_classifier(overrides["guidance_classifier"])
