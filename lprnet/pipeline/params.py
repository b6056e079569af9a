"""Reading one section of params.yaml into a frozen dataclass: a misspelt or missing key fails at once.

The file must be UTF-8 YAML with plain data only (no `!!python/...` tags) and no key given twice in one mapping. Every
number anywhere in a section must be finite: `.nan` fails every `x < limit` check and `.inf` is no setting, so both
are refused here, once for every key, before a dataclass's own checks run. Does not know any stage's keys (each stage
declares its own dataclass).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import TypeVar, get_origin, get_type_hints

import yaml

from lprnet.errors import InputError, MissingFileError

T = TypeVar("T")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            if isinstance(key, (list, dict)):  # unhashable: let the base class refuse it
                break
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(path: Path) -> object:
    """The YAML document in `path`; an InputError naming the file (and line) for anything but UTF-8 plain-data YAML
    with unique keys."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text (byte {error.start})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise InputError(f"{path}: not valid YAML{where} ({' '.join(str(problem).split())})") from None


def read_section(path: str | os.PathLike, section: str, cls: type[T]) -> T:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such params file")
    params = load_yaml(path) or {}
    if not isinstance(params, dict) or section not in params or not isinstance(params[section], dict):
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
    for name, value in values.items():
        refuse_non_finite(value, f"{where}.{name}")
    converted = {name: _convert(value, get_origin(hints[name]) or hints[name], f"{where}.{name}")
                 for name, value in values.items()}
    try:
        return cls(**converted)
    except ValueError as error:  # a dataclass's own check (__post_init__) names the key, not the file
        raise InputError(f"{path}: {error}") from None


def refuse_non_finite(value, where: str) -> None:
    """Refuse NaN and infinities anywhere in `value` (a number, a numeric string, or inside lists and dicts)."""
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            refuse_non_finite(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            refuse_non_finite(item, f"{where}.{key}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{where}: expected a finite number, got {value!r}")


def _convert(value, expected, where: str):
    # YAML reads `1e-3` as a string and `2` where a float is meant; accept what is unambiguous, refuse the rest.
    if expected is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return number
            raise InputError(f"{where}: expected a finite number, got {value!r}")
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
