"""Typed, validated dataclasses from TOML dicts: one mechanism for config and target options."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin

from packager.errors import UserError

T = TypeVar("T")


def shown(key: str) -> str:
    """A user's key as it can appear in a one-line message (escaped if it has a newline...)."""
    return key if key.isprintable() else repr(key)[1:-1]


def hint(key: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):  # TOML has no null: None is "leave it out"
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"table of {_type_name(get_args(tp)[1])}"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; ints pass as floats, nothing else is converted."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except UserError:
                continue
    elif origin is Literal:
        if value in get_args(tp):
            return value
        raise UserError(f"{where} = {value!r} is not allowed; use one of {_type_name(tp)}")
    elif origin is list:
        if isinstance(value, list):
            return [coerce(v, get_args(tp)[0], f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):  # TOML keys are always strings
            vt = get_args(tp)[1]
            return {k: coerce(v, vt, f"{where}.{shown(k)}") for k, v in value.items()}
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise UserError(f"{where} = {value!r} must be a finite number")
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise UserError(f"{where} must be {_type_name(tp)}, got {value!r}")


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str) -> T:
    """Build dataclass `cls` from `data`, naming the key of any unknown or mistyped entry."""
    data = data or {}
    if not isinstance(data, dict):
        raise UserError(f"[{where}] must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise UserError(f"unknown key '{shown(key)}' in [{where}]{hint(key, fields)}")
        kwargs[key] = coerce(value, hints[key], f"{where}.{key}")
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise UserError(f"[{where}]: {exc}") from None
    check = getattr(obj, "check", None)
    if check:
        check(where)
    return obj


def describe(cls: type) -> list[dict[str, str]]:
    """Field names, types and defaults, for `packager targets` and docs."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        rows.append({"key": f.name, "type": _type_name(hints[f.name]), "default": repr(default)})
    return rows
