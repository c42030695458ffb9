"""runtime.json: what the bundle's predict.py needs to run the model."""

from __future__ import annotations

from typing import Any, Literal

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
    positive: str | None = Field(description="null for a multi-label model")
    threshold: float
    output: OutputKind
    fixed_batch: int | None
    input: TensorInput
    task: Literal["multilabel"] | None = Field(
        None, description="absent: one class per image, the positive class against the rest"
    )
    thresholds: dict[str, float] | None = Field(
        None, description="multilabel: each finding's threshold; a finding is present at p >= it"
    )

    @model_validator(mode="after")
    def _positive_is_a_label(self) -> Runtime:
        if self.task == "multilabel":
            if self.positive is not None or set(self.thresholds or {}) != set(self.labels):
                raise ValueError("multilabel: positive is null and every label has a threshold")
        elif self.positive not in self.labels:
            raise ValueError(f"positive {self.positive!r} is not one of labels {self.labels}")
        return self
