"""The base classes every document model derives from."""

from __future__ import annotations

from typing import TypeVar, dataclass_transform

import pydantic.dataclasses
from pydantic import BaseModel, ConfigDict, Field

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
T = TypeVar("T")


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass_transform(field_specifiers=(Field,))
def _part(cls: type[T]) -> type[T]:
    """A closed section written as a dataclass (one that packager's own code builds, or one
    extending such a dataclass), validated as laxly as the models above (a JSON string is a
    status word)."""
    return pydantic.dataclasses.dataclass(cls, config=ConfigDict(extra="forbid"))  # type: ignore[return-value]


class _Open(BaseModel):
    """Keys beyond the declared ones are another component's (e.g. a runtime's own info)."""

    model_config = ConfigDict(extra="allow")
