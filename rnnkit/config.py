"""Typed configs: dataclasses, built from dicts or dotted overrides, failing loudly.

Every configurable thing in rnnkit (trainer, models, tasks) owns a dataclass
config. :func:`from_dict` builds one from plain data (JSON, a checkpoint);
:func:`apply_overrides` applies command-line style ``"optim.lr=0.01"`` strings.
An unknown key or a value of the wrong type raises :class:`ConfigError`, naming
the key, the expected type and what was received.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(ValueError):
    """An unknown key or a wrongly typed value in a config."""


def to_dict(config) -> dict:
    """The config as plain JSON-serialisable data."""
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types fail."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of fields, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{_join(where, unknown[0])}: unknown key for {cls.__name__}; expected one of {sorted(names)}")
    values = {name: _coerce(hints[name], value, _join(where, name), from_text=False) for name, value in data.items()}
    return cls(**values)


def apply_overrides(config: T, overrides: list[str]) -> T:
    """Return a copy of ``config`` with ``"a.b=value"`` overrides applied (values parsed from text)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override: expected KEY=VALUE (for example optim.lr=0.01), got {item!r}")
        config = _set_path(config, key.split("."), text, key)
    return config


def _set_path(config, path: list[str], text: str, full_key: str):
    hints = get_type_hints(type(config))
    head = path[0]
    if head not in hints:
        names = sorted(f.name for f in dataclasses.fields(config))
        raise ConfigError(f"{full_key}: unknown key for {type(config).__name__}; expected one of {names}")
    if len(path) == 1:
        value = _coerce(hints[head], text, full_key, from_text=True)
    else:
        child = getattr(config, head)
        if not dataclasses.is_dataclass(child):
            raise ConfigError(f"{full_key}: {head} is a {type(child).__name__}, not a section with keys")
        value = _set_path(child, path[1:], text, full_key)
    return dataclasses.replace(config, **{head: value})


def _coerce(hint, value, key: str, from_text: bool) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (from_text and value in ("None", "null")):
            if type(None) in args:
                return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, key, from_text)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}: expected {_name(hint)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    if origin in (tuple, list):
        items = json.loads(value) if from_text and isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return origin(_coerce(inner, v, key, from_text=False) for v in items)
    if hint is Any:
        return value
    if hint is bool:
        if from_text and isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if isinstance(value, bool):
            return value
    elif hint in (int, float):
        accepted = int if hint is int else (int, float)
        if from_text and isinstance(value, str):
            try:
                return hint(value)
            except ValueError:
                pass
        elif isinstance(value, accepted) and not isinstance(value, bool):
            return hint(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {_name(hint)}, got {value!r}")


def _name(hint) -> str:
    return getattr(hint, "__name__", str(hint))


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
