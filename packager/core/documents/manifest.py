"""manifest.json: the bundle's identity and every other file's sha256."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from packager.core.documents.base import _Closed
from packager.core.documents.parts import Host, NoRuntime, RuntimeInfo
from packager.core.status import (
    ManifestStatus,
)


class SourceModel(_Closed):
    file: str
    sha256: str


class DataRef(_Closed):
    sha256: str
    split: str
    n: int


class Tool(_Closed):
    packager: str


class ValidatedBy(_Closed):
    host: Host
    status: ManifestStatus
    runtime: RuntimeInfo | None = Field(None, description="set by packager validate")


class FileEntry(_Closed):
    sha256: str
    size: int


class Manifest(_Closed):
    """manifest.json: the bundle's identity and every other file's sha256."""

    model_config = ConfigDict(title="packager manifest.json")

    schema_version: Literal[1]
    name: str
    version: str
    target: str
    precision: str
    status: ManifestStatus
    source_model: SourceModel
    data: DataRef
    config: dict[str, Any] = Field(description="packager.toml as built, without local paths")
    tool: Tool
    runtime: RuntimeInfo | NoRuntime
    details: dict[str, Any]
    validated_by: ValidatedBy
    inputs_sha256: str | None = Field(
        None,
        description="the hash of everything that decided this build (packager.builder.inputs): "
        "a build from equal inputs finds this bundle up to date",
    )
    files: dict[str, FileEntry]
