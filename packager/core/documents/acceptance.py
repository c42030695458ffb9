"""The acceptance record (written by packager/shipped/selftest.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from packager.core.documents.base import _Closed
from packager.core.documents.parts import RuntimeInfo
from packager.core.status import (
    CheckStatus,
    Verdict,
)


class AcceptedBundle(_Closed):
    name: str | None
    version: str | None
    target: str | None
    precision: str | None
    manifest_sha256: str | None = Field(description="null: the bundle has no manifest.json")


class HostRuntime(_Closed):
    runtime: str | None
    version: str | None
    device: str | None


class AcceptanceHost(_Closed):
    """The host fingerprint: what a numerics difference can be traced to."""

    cpu: str
    cores: int | None
    isa_flags: list[str]
    os: str
    machine: str
    python: str
    numpy: str
    runtime: HostRuntime
    gpu: Any = Field(description="the runtime's GPU description, if it gives one")


class IntegrityCheck(_Closed):
    """packager's own check of the bundle, before any of its code ran (`packager selftest`):
    every file against the manifest, the signature (when there is one, or a key was given),
    report.json's code hashes, and the manifest's config against runtime.json and report.json."""

    name: Literal["integrity"]
    status: Literal[CheckStatus.passed, CheckStatus.failed]
    checked_by: Literal["packager"]
    problems: list[str]


class Integrity(_Closed):
    """What the verdict rests on. A self-test run from the bundle is its own code checking
    itself: only a signature checked with the vendor's key, or the manifest sha256 compared with
    the one the release published, ties the bundle to its vendor."""

    basis: Literal["signature", "manifest", "unverified"]
    statement: str = Field(
        description="`signature verified (key fingerprint sha256:…)`, `manifest sha256 …, "
        "compare with the release notes`, or `unverified`"
    )
    checked_by: Literal["bundle", "packager"] = Field(
        description="whose code made the statement: the bundle's own selftest.py, or packager"
    )


class ManifestCheck(_Closed):
    name: Literal["manifest"]
    status: Literal[CheckStatus.passed, CheckStatus.failed]
    files: int
    problems: list[str]


class RuntimeCheck(_Closed):
    name: Literal["runtime"]
    status: Literal[CheckStatus.passed, CheckStatus.not_run]
    kind: str | None = None
    reason: str | None = None


class WorstCase(_Closed):
    case: int
    kind: str
    golden: float
    got: float


class UnreadableCase(_Closed):
    case: int
    kind: str
    error: str


class PreprocessingCheck(_Closed):
    """The raw image files of selftest.npz through the bundle's preprocess.py."""

    name: Literal["preprocessing"]
    status: Literal[CheckStatus.passed, CheckStatus.failed]
    cases: int
    formats: list[str]
    unreadable: list[UnreadableCase]


class ProbabilitiesCheck(_Closed):
    name: Literal["probabilities"]
    status: Literal[CheckStatus.passed, CheckStatus.failed]
    cases: int
    failing: int
    failing_cases: list[int]
    tolerance: float
    max_abs_diff: float
    worst: WorstCase


class DecisionsCheck(_Closed):
    name: Literal["decisions"]
    status: Literal[CheckStatus.passed, CheckStatus.failed]
    cases: int
    within_tolerance_of_threshold: int
    differing_cases: list[int]


AcceptanceCheck = Annotated[
    IntegrityCheck
    | ManifestCheck
    | RuntimeCheck
    | PreprocessingCheck
    | ProbabilitiesCheck
    | DecisionsCheck,
    Field(discriminator="name"),
]


class Acceptance(_Closed):
    """The acceptance record of `predict.py --self-test --record PATH` on a receiving host."""

    model_config = ConfigDict(title="packager acceptance record")

    schema_version: Literal[1]
    record: Literal["packager acceptance"]
    bundle: AcceptedBundle
    host: AcceptanceHost
    runtime: RuntimeInfo | None
    checks: list[AcceptanceCheck]
    verdict: Verdict
    integrity: Integrity
    checked_at: datetime

    @model_validator(mode="after")
    def _verdict_follows_checks(self) -> Acceptance:
        statuses = {c.status for c in self.checks}
        expected = (
            Verdict.rejected
            if CheckStatus.failed in statuses
            else Verdict.not_run
            if CheckStatus.not_run in statuses
            else Verdict.accepted
        )
        if self.verdict != expected:
            raise ValueError(f"verdict {self.verdict} does not follow its checks ({expected})")
        if self.verdict == Verdict.accepted and self.integrity.basis == "unverified":
            raise ValueError("an accepted bundle rests on a signature or a manifest sha256")
        return self
