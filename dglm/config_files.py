"""Reading configuration files into dataclasses: YAML with `extends`, and nested dataclasses built from mappings
with errors that name the file and key (unknown keys, values of the wrong type)."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

from dglm.errors import DglmError


def read_yaml_mapping(path: Path, kind: str, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML file's mapping, with `extends: OTHER.yaml` resolved: the file's keys override OTHER's, key by key
    in nested mappings, so a config states only what it changes. OTHER is relative to the file."""
    import yaml

    path = path.resolve()
    if path in seen:
        raise DglmError(f"{kind} config {path} extends itself (through {' -> '.join(p.name for p in seen)})")
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DglmError(f"{kind} config {path} does not exist") from None
    except yaml.YAMLError as error:
        raise DglmError(f"{kind} config {path} is not valid YAML ({str(error).splitlines()[0]})") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise DglmError(f"{kind} config {path} must be a mapping of keys to values, got {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise DglmError(f"{path}: extends must be the path of another config, got {parent!r}")
    return merge_mappings(read_yaml_mapping(path.parent / parent, kind, seen + (path,)), data)


def merge_mappings(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = merge_mappings(merged[key], value)
        merged[key] = value
    return merged


def load_yaml(cls: type, path: Path | str, kind: str) -> Any:
    """Build a config dataclass from a YAML file (following `extends`), with errors that name the file and key."""
    return build_dataclass(cls, read_yaml_mapping(Path(path), kind), str(path))


def build_dataclass(cls: type, data: Any, where: str) -> Any:
    """Build a (nested) dataclass from a dict, rejecting unknown keys and values of the wrong type."""
    if not isinstance(data, dict):
        raise DglmError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise DglmError(f"unknown key(s) {unknown} in {where}; accepted: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        if dataclasses.is_dataclass(hints[name]):
            values[name] = build_dataclass(hints[name], value, f"{where}.{name}")
        else:
            values[name] = checked_value(value, hints[name], f"{where}.{name}")
    try:
        return cls(**values)
    except DglmError as error:  # a settings section's range check, which knows the key but not the file
        raise DglmError(f"{where}: {error}") from None


def checked_value(value: Any, hint: Any, where: str) -> Any:
    """`value` if it has the declared type (an int is accepted for a float, as YAML writes 1 for 1.0), else an error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [arg for arg in args if arg is not type(None)]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if value in args:
            return value
        raise DglmError(f"{where} must be one of {', '.join(map(str, args))}, got {value!r}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is list and isinstance(value, list):
        if not args:
            return value
        return [checked_value(item, args[0], f"{where}[{index}]") for index, item in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        if not args:
            return value
        return {checked_value(k, args[0], f"{where} key"): checked_value(v, args[1], f"{where}.{k}")
                for k, v in value.items()}
    expected = origin or hint
    if expected is typing.Any or isinstance(value, expected) and not (isinstance(value, bool) and expected is not bool):
        return value
    raise DglmError(f"{where} must be {type_name(hint)}, got {value!r}")


def type_name(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if hint in names:
        return names[hint]
    origin = typing.get_origin(hint)
    return {list: "a list", dict: "a mapping"}.get(origin, str(hint))
