"""Load frozen config dataclasses from TOML mappings, and render them back as commented TOML.

Every component's config is a frozen dataclass with a docstring under each field. This module
turns a TOML table into such a dataclass, checking every key's type and naming the key (dotted
path) in every error, and renders a dataclass as a TOML template in which every key appears,
commented out, with its default and its docstring.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin

from overlay.errors import ConfigError

__all__ = ["field_docs", "from_mapping", "render_toml"]

T = TypeVar("T")


def from_mapping(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build ``cls`` from ``data``; unknown keys and wrong types raise :class:`ConfigError`."""
    if not isinstance(data, Mapping):
        raise ConfigError(prefix.rstrip(".") or "<root>", "must be a table")
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{prefix}{key}", f"unknown key (known: {', '.join(sorted(fields))})")
    kwargs: dict[str, Any] = {}
    for name in fields:
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if prefix and not exc.key.startswith(prefix):
            raise ConfigError(f"{prefix}{exc.key}", str(exc).split(": ", 1)[-1]) from None
        raise


def _coerce(typ: Any, value: Any, key: str) -> Any:
    origin = get_origin(typ)
    if dataclasses.is_dataclass(typ) and isinstance(typ, type):
        return from_mapping(typ, value, f"{key}.")
    if origin is Literal:
        if value not in get_args(typ):
            choices = ", ".join(repr(a) for a in get_args(typ))
            raise ConfigError(key, f"must be one of {choices}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(typ)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(key, f"invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"must be a list, got {type(value).__name__}")
        (item_type, _ellipsis) = get_args(typ)
        return tuple(_coerce(item_type, v, f"{key}[{i}]") for i, v in enumerate(value))
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(key, "must be finite")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        return value
    raise ConfigError(key, f"unsupported config type {typ!r}")


_DOCS: dict[type, dict[str, str]] = {}


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (read from its source)."""
    cached = _DOCS.get(cls)
    if cached is not None:
        return cached
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0]
        assert isinstance(body, ast.ClassDef)
        stmts = body.body
        for stmt, nxt in zip(stmts, stmts[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    _DOCS[cls] = docs
    return docs


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if value is None:
        return '""'
    raise TypeError(f"cannot render {value!r} as TOML")


def render_toml(config: Any, *, section: str = "", overrides: Mapping[str, Any] = {}) -> str:
    """Render ``config`` as TOML: every key with its docstring; keys equal to their default are
    commented out, keys in ``overrides`` (dotted) are written live."""
    assert dataclasses.is_dataclass(config)
    config_type: type[Any] = type(config)
    docs = field_docs(config_type)
    lines: list[str] = []
    nested: list[tuple[str, Any]] = []
    if section:
        lines.append(f"[{section}]")
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            nested.append((f.name, value))
            continue
        for doc_line in docs.get(f.name, "").splitlines():
            lines.append(f"# {doc_line}".rstrip())
        dotted = f"{section}.{f.name}" if section else f.name
        if dotted in overrides:
            lines.append(f"{f.name} = {_toml_value(overrides[dotted])}")
        else:
            lines.append(f"# {f.name} = {_toml_value(value)}")
        lines.append("")
    out = "\n".join(lines)
    for name, value in nested:
        sub = f"{section}.{name}" if section else name
        out += "\n" + render_toml(value, section=sub, overrides=overrides)
    return out
