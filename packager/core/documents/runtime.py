"""runtime.json: what the bundle's predict.py needs to run the model."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, model_validator

from packager.core.documents.base import _Closed
from packager.core.status import (
    OutputKind,
)


class TensorInput(_Closed):
    name: str
    shape: list[int | str] = Field(description="a string is a symbolic (dynamic) dimension")
    dtype: str


class Runtime(_Closed):
    """runtime.json: what predict.py needs to run the bundle and decide."""

    model_config = ConfigDict(title="packager runtime.json")

    target: str
    precision: str
    runner_options: dict[str, Any] = Field(description="the target's runtime.py reads these")
    labels: list[str]
    positive: str
    threshold: float
    output: OutputKind
    fixed_batch: int | None
    input: TensorInput

    @model_validator(mode="after")
    def _positive_is_a_label(self) -> Runtime:
        if self.positive not in self.labels:
            raise ValueError(f"positive {self.positive!r} is not one of labels {self.labels}")
        return self
