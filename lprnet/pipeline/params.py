"""Reading one section of params.yaml into a frozen dataclass: a misspelt or missing key fails at once.

Does not know any stage's keys (each stage declares its own dataclass).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TypeVar, get_origin, get_type_hints

import yaml

from lprnet.errors import InputError, MissingFileError

T = TypeVar("T")


def read_section(path: str | os.PathLike, section: str, cls: type[T]) -> T:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such params file")
    with open(path, encoding="utf-8") as f:
        params = yaml.safe_load(f) or {}
    if section not in params or not isinstance(params[section], dict):
        raise InputError(f"{path}: no section {section!r}")
    return from_dict(params[section], cls, path, section)


def from_dict(values: dict, cls: type[T], path: Path, section: str) -> T:
    where = f"{path}: {section}"
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(fields)}")
    missing = sorted(name for name, f in fields.items() if name not in values
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if missing:
        raise InputError(f"{where}: missing key(s) {', '.join(missing)}")
    hints = get_type_hints(cls)
    converted = {name: _convert(value, get_origin(hints[name]) or hints[name], f"{where}.{name}")
                 for name, value in values.items()}
    try:
        return cls(**converted)
    except ValueError as error:  # a dataclass's own check (__post_init__) names the key, not the file
        raise InputError(f"{path}: {error}") from None


def _convert(value, expected, where: str):
    # YAML reads `1e-3` as a string and `2` where a float is meant; accept what is unambiguous, refuse the rest.
    if expected is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    elif expected is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif expected is str and isinstance(value, str):
        return value
    elif expected is str and value is None:
        return ""
    elif expected is bool and isinstance(value, bool):
        return value
    elif expected is dict and isinstance(value, dict):
        return value
    elif expected not in (float, int, str, bool, dict):
        return value
    raise InputError(f"{where}: expected {expected.__name__}, got {value!r}")
