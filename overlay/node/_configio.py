"""Load frozen config dataclasses from TOML mappings, and render them back as commented TOML.

Every component's config is a frozen dataclass with a docstring under each field. This module
turns a TOML table into such a dataclass, checking every key's type and naming the key (dotted
path) in every error, and renders a dataclass as a TOML template in which every key appears,
commented out, with its default and its docstring.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
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
    """Build ``cls`` from ``data``; unknown keys and wrong types raise :class:`ConfigError`
    naming the key's dotted path, the expected type and the value as TOML spells it."""
    if not isinstance(data, Mapping):
        raise ConfigError(prefix.rstrip(".") or "<root>", f"expected a table, got {_got(data)}")
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


def _toml(value: Any) -> str:
    """``value`` as TOML writes it (``true``, ``"text"``, ``[1, 2]``), shortened."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and not math.isfinite(value):
        text = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    elif isinstance(value, str):
        text = _toml_value(value)
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(_toml(v) for v in value) + "]"
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    elif isinstance(value, datetime.datetime | datetime.date | datetime.time):
        text = value.isoformat()
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    """The TOML type of a parsed value, with its article."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, datetime.datetime):
        return "a date-time"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, datetime.time):
        return "a time"
    return type(value).__name__


def _got(value: Any) -> str:
    return f"{_kind(value)} ({_toml(value)})" if not isinstance(value, Mapping) else "a table"


def _expected(typ: Any) -> str:
    """What a value of config type ``typ`` looks like in TOML."""
    origin = get_origin(typ)
    if dataclasses.is_dataclass(typ):
        return "a table"
    if origin is Literal:
        return "one of " + ", ".join(_toml(a) for a in get_args(typ))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expected(a) for a in get_args(typ) if a is not type(None))
    if origin is tuple:
        return f"an array of {_expected(get_args(typ)[0]).removeprefix('a ').removeprefix('an ')}s"
    return {bool: "a boolean (true or false)", int: "an integer", float: "a number",
            str: "a string"}.get(typ, repr(typ))


def _mismatch(typ: Any, value: Any, key: str) -> ConfigError:
    return ConfigError(key, f"expected {_expected(typ)}, got {_got(value)}")


def _table_type(typ: Any) -> bool:
    """A config type that parses and renders itself as a free-form table (``from_toml`` /
    ``to_toml``), e.g. routing's ``TargetSet`` (keys are capability names)."""
    return isinstance(typ, type) and hasattr(typ, "from_toml") and hasattr(typ, "to_toml")


def _coerce(typ: Any, value: Any, key: str) -> Any:
    origin = get_origin(typ)
    if _table_type(typ):
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a table, got {_got(value)}")
        try:
            return typ.from_toml(value)
        except ConfigError as exc:
            inner = exc.key.split(".", 1)[1] if "." in exc.key else ""
            raise ConfigError(f"{key}.{inner}".rstrip("."),
                              str(exc).split(": ", 1)[-1]) from None
    if dataclasses.is_dataclass(typ) and isinstance(typ, type):
        return from_mapping(typ, value, f"{key}.")
    if origin is Literal:
        if isinstance(value, bool) or value not in get_args(typ):
            raise _mismatch(typ, value, key)
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(typ)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError:
                pass
        raise _mismatch(typ, value, key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _mismatch(typ, value, key)
        (item_type, _ellipsis) = get_args(typ)
        return tuple(_coerce(item_type, v, f"{key}[{i}]") for i, v in enumerate(value))
    if typ is bool:
        if not isinstance(value, bool):
            raise _mismatch(typ, value, key)
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _mismatch(typ, value, key)
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _mismatch(typ, value, key)
        if not math.isfinite(value):
            raise ConfigError(key, f"expected a finite number, got {_toml(value)}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise _mismatch(typ, value, key)
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
    if _table_type(type(value)):
        value = value.to_toml()
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
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
        if dataclasses.is_dataclass(value) and not _table_type(type(value)):
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
