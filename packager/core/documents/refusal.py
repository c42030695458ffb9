"""refusal.json: why a target could not take the model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict

from packager.core.documents.base import _Closed
from packager.core.status import (
    RefusalStatus,
)


class RefusedModel(_Closed):
    name: str
    version: str
    source_sha256: str
    quantization: dict[str, Any] | None


class Refusal(_Closed):
    """refusal.json: a target that cannot take the model, kept under DIR/.failed/."""

    model_config = ConfigDict(title="packager refusal.json")

    schema_version: Literal[1]
    target: str
    status: RefusalStatus
    reason: str
    model: RefusedModel
