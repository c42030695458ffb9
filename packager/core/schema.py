"""Typed tables from TOML dicts with pydantic: one mechanism for config, target options and the SLA
file. pydantic validates; this module turns its first error into the one-line UserError."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Annotated, Any, Literal, TypeVar, dataclass_transform, get_args, get_origin

import pydantic.dataclasses
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import ErrorDetails, core_schema

from packager.core.errors import UserError

T = TypeVar("T")

# Strict: no str -> int; ints pass as floats, bools never pass as numbers; NaN/Inf refused.
STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, defer_build=True)
NonNegative = Annotated[float, Field(ge=0)]
# A runtime's thread count; 0 is the runtime's own default. A billion threads is an allocation
# failure in the runtime (std::bad_alloc), not a setting.
MAX_THREADS = 1024
Threads = Annotated[int, Field(ge=0, le=MAX_THREADS)]


@dataclass_transform(field_specifiers=(dataclasses.field,))
def typed(cls: type[T]) -> type[T]:
    """A pydantic dataclass with the strict rules above (still a dataclass: replace() validates)."""
    return pydantic.dataclasses.dataclass(cls, config=STRICT)  # type: ignore[return-value]


def shown(key: str) -> str:
    """A user's key as it can appear in a one-line message (escaped if it has a newline...)."""
    return key if key.isprintable() else repr(key)[1:-1]


def hint(key: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType)


def type_text(tp: Any) -> str:
    """An annotation as users read it: int, list of float, 'NCHW' | 'NHWC'."""
    origin = get_origin(tp)
    if origin is Annotated:
        return type_text(get_args(tp)[0])
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if _is_union(tp):  # TOML has no null: None is "leave it out"
        return " or ".join(type_text(a) for a in get_args(tp) if a is not type(None))
    if origin is list:
        return f"list of {type_text(get_args(tp)[0])}"
    if origin is dict:
        return f"table of {type_text(get_args(tp)[1])}"
    return getattr(tp, "__name__", str(tp))


def _annotation_at(tp: Any, loc: tuple[int | str, ...]) -> Any:
    """The annotation pydantic checked at error location `loc` below `tp`."""
    for part in loc:
        while get_origin(tp) is Annotated or _is_union(tp):
            tp = next(a for a in get_args(tp) if a is not type(None))
        if dataclasses.is_dataclass(tp):
            tp = typing.get_type_hints(tp, include_extras=True)[str(part)]
        elif get_origin(tp) in (list, dict):
            tp = get_args(tp)[-1]
    return tp


def first_error(exc: ValidationError) -> ErrorDetails:
    """An unknown key first: a typo explains any other error."""
    errors = exc.errors()
    unknown = ("unexpected_keyword_argument", "extra_forbidden")
    return next((e for e in errors if e["type"] in unknown), errors[0])


def range_text(tp: Any) -> str:
    """The bounds an Annotated[..., Field(ge=..., le=...)] declares, e.g. `between 1 and 1000`."""
    bounds: dict[str, Any] = {}
    for meta in get_args(tp)[1:] if get_origin(tp) is Annotated else ():
        for m in getattr(meta, "metadata", [meta]):
            for key in ("ge", "gt", "le", "lt"):
                if getattr(m, key, None) is not None:
                    bounds[key] = getattr(m, key)
    low = (
        f"{bounds['ge']}"
        if "ge" in bounds
        else f"more than {bounds['gt']}"
        if "gt" in bounds
        else ""
    )
    high = (
        f"{bounds['le']}"
        if "le" in bounds
        else f"less than {bounds['lt']}"
        if "lt" in bounds
        else ""
    )
    if low and high:
        return f"between {low} and {high}"
    return f"at least {low}" if low else f"at most {high}" if high else "in range"


def _value_problem(err: ErrorDetails, tp: Any, where: str) -> str:
    """The message for a value pydantic refused at `where` (annotation `tp`)."""
    value = err["input"]
    if err["type"] == "finite_number":
        return f"{where} = {value!r} must be a finite number"
    if err["type"] in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return f"{where} = {value!r} is out of range; it must be {range_text(tp)}"
    if err["type"] == "literal_error" and not _is_union(tp):
        return f"{where} = {value!r} is not allowed; use one of {type_text(tp)}"
    return f"{where} must be {type_text(tp)}, got {value!r}"


def _nested(tp: Any, value: Any, where: str) -> Any:
    """A nested typed table (or a table of them, e.g. [gates.classes.<name>]) built by
    from_dict; any other value as it is, for pydantic to check."""
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value, where)
    args = get_args(tp)
    if get_origin(tp) is dict and dataclasses.is_dataclass(args[1]) and isinstance(value, dict):
        return {
            k: from_dict(args[1], v, f"{where}.{shown(str(k))}") if isinstance(v, dict) else v
            for k, v in value.items()
        }
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str) -> T:
    """Build typed dataclass `cls` from `data`, naming the key of any unknown or mistyped entry;
    then its `check(where)`, the cross-field rules that name `where` in their messages."""
    if not pydantic.dataclasses.is_pydantic_dataclass(cls):  # a plain one would take any value
        raise TypeError(f"{cls.__qualname__} must be declared with @packager.core.schema.typed")
    data = {} if data is None else data  # "" or [] is a mistake, not an empty table
    if not isinstance(data, dict):
        raise UserError(f"[{where}] must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    # Strict pydantic dataclasses take only instances for nested dataclasses: build those first.
    data = {k: _nested(hints[k], v, f"{where}.{k}") if k in hints else v for k, v in data.items()}
    try:
        obj = cls(**data)
    except ValidationError as exc:
        err = first_error(exc)
        key = err["loc"][0] if err["loc"] else ""
        if err["type"] == "unexpected_keyword_argument":
            raise UserError(
                f"unknown key '{shown(str(key))}' in [{where}]{hint(str(key), hints)}"
            ) from None
        if err["type"] == "missing_argument":
            raise UserError(f"[{where}]: missing required key '{key}'") from None
        path = where + "".join(
            f"[{p}]" if isinstance(p, int) else f".{shown(p)}" for p in err["loc"]
        )
        raise UserError(_value_problem(err, _annotation_at(cls, err["loc"]), path)) from None
    check = getattr(obj, "check", None)
    if check:
        check(where)
    return obj


class _FactoryDefaults(GenerateJsonSchema):
    # pydantic leaves default_factory values (lists, tables) out of the schema; users need them.
    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            return factory()  # type: ignore[call-arg]
        return super().get_default_value(schema)


def json_schema(cls: type) -> dict[str, Any]:
    """The JSON Schema of a typed table, defaults included."""
    return TypeAdapter(cls).json_schema(schema_generator=_FactoryDefaults)


def _schema_type(s: dict[str, Any]) -> str:
    if "$ref" in s:
        return s["$ref"].rsplit("/", 1)[-1]
    if "enum" in s:
        return " | ".join(repr(v) for v in s["enum"])
    if "anyOf" in s:
        return " or ".join(_schema_type(a) for a in s["anyOf"] if a.get("type") != "null")
    kind = s.get("type")
    if kind == "array":
        return f"list of {_schema_type(s.get('items', {}))}"
    if kind == "object":
        return f"table of {_schema_type(s.get('additionalProperties', {}))}"
    names = {"integer": "int", "number": "float", "string": "str", "boolean": "bool"}
    return names.get(str(kind), str(kind))


def describe(cls: type) -> list[dict[str, str]]:
    """Keys, types and defaults, for `packager targets` and docs (read off the JSON Schema)."""
    props = json_schema(cls)["properties"]
    return [
        {"key": key, "type": _schema_type(s), "default": repr(s.get("default"))}
        for key, s in props.items()
    ]
