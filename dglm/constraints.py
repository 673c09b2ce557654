"""Constraints: what a request asks of a continuation, before any model is involved.

A constraint names an attribute, a target label and a weight; a negative weight steers *away* from the label. A phrase
is a constraint of the attribute `PHRASE` whose label is the phrase. Several constraints compose by summing
(`dglm.stages.guidance` turns them into a guide). This module parses the CLI's and the API's forms of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Union

from dglm.errors import DglmError
from dglm.inputs import check_text

PHRASE = "phrase"  # the attribute of a constraint given as a phrase (its label is the phrase): no probe may take it


@dataclass(frozen=True)
class Constraint:
    """A target: steer toward `label` of `attribute` with `weight` (a negative weight steers away from it).
    Checked when built, so that a bad constraint fails here, not deep inside the guidance.

    A phrase needs no labelled data: `Constraint.toward("a storm at sea")` steers towards the encoder's embedding
    of the phrase (attribute "phrase", the text as its label), `Constraint.away(...)` from it."""

    attribute: str
    label: str
    weight: float = 1.0

    @classmethod
    def toward(cls, text: str, weight: float = 1.0) -> "Constraint":
        return cls(PHRASE, text, weight)

    @classmethod
    def away(cls, text: str, weight: float = 1.0) -> "Constraint":
        return cls(PHRASE, text, -weight)

    def __post_init__(self) -> None:
        if self.attribute == PHRASE:
            check_text(self.label, "a phrase (--toward / --away, or a request's {\"text\": ...})", field="attributes")
        else:
            check_text(self.attribute, "an attribute's name", field="attributes")
            check_text(self.label, f"the label of attribute {self.attribute!r}", field="attributes")
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise DglmError(f"weight for attribute {self.attribute!r} must be a finite number, got {weight!r}")
        object.__setattr__(self, "weight", float(weight))


def parse_phrase(spec: str, sign: float = 1.0) -> Constraint:
    """Parse ``TEXT`` or ``TEXT:WEIGHT`` (the CLI's --toward / --away form; `sign` -1 for --away). A colon whose
    tail is not a number is part of the text."""
    text, sep, weight = spec.rpartition(":")
    if sep and text.strip():
        try:
            return Constraint(PHRASE, text.strip(), sign * float(weight))
        except ValueError:
            pass
    return Constraint(PHRASE, spec.strip(), sign)


AttributeSpec = Union[None, str, Constraint, Mapping[str, Union[str, tuple]], Iterable[Union[str, Constraint]]]


def parse_constraint(spec: str) -> Constraint:
    """Parse ``NAME=LABEL`` or ``NAME=LABEL:WEIGHT`` (the CLI's --attr form)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise DglmError(f"attribute {spec!r} is not of the form NAME=LABEL or NAME=LABEL:WEIGHT")
    label, sep, weight_text = rest.partition(":")
    weight = 1.0
    if sep:
        try:
            weight = float(weight_text)
        except ValueError:
            raise DglmError(f"weight {weight_text!r} in {spec!r} is not a number (e.g. "
                            "sentiment=positive:2.0)") from None
    return Constraint(name.strip(), label.strip(), weight)


def as_constraints(attributes: AttributeSpec) -> list[Constraint]:
    """Accept None, a dict {name: label | (label, weight)}, or a list of Constraint / 'NAME=LABEL[:W]'."""
    if attributes is None:
        return []
    if isinstance(attributes, (str, Constraint)):
        attributes = [attributes]
    if isinstance(attributes, Mapping):
        constraints = []
        for name, target in attributes.items():
            if isinstance(target, str):
                constraints.append(Constraint(name, target))
            elif isinstance(target, (tuple, list)) and len(target) == 2:
                constraints.append(Constraint(name, *target))
            else:
                raise DglmError(f"attribute {name!r} must map to a label or a (label, weight) pair, got {target!r}")
        return constraints
    if not isinstance(attributes, Iterable):
        raise DglmError("attributes must be a dict, a list of constraints or 'NAME=LABEL[:WEIGHT]' "
                        f"strings, got {attributes!r}")
    constraints = []
    for item in attributes:
        if not isinstance(item, (str, Constraint)):
            raise DglmError(f"an attribute must be a Constraint or a 'NAME=LABEL[:WEIGHT]' string, got {item!r}")
        constraints.append(item if isinstance(item, Constraint) else parse_constraint(item))
    return constraints
