"""Parts several documents share: steps, gate checks, runtime and host facts."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from packager.core.documents.base import _Closed, _Open, _part
from packager.core.status import (
    Basis,
    CheckStatus,
    GateVerdict,
    StepStatus,
)


class RuntimeInfo(_Open):
    """A runner's info(): the runtime, its version and device, plus what that runtime adds."""

    runtime: str
    version: str | None = None
    device: str | None = None


class NoRuntime(_Closed):
    """`{}`: nothing ran validation (the target's runtime and any proxy are absent here)."""


class Host(_Closed):
    """packager.core.hostinfo.host_facts()."""

    cpu: str
    cores: int | None
    flags: list[str]
    os: str
    machine: str
    python: str


@_part
class Step:
    """One build step in report.json (the build stages and site validation append them)."""

    name: str
    status: StepStatus
    reason: str = ""  # step timings go to progress, not the report: reports are reproducible


class CheckRecord(_Closed):
    """packager.core.target.Check.to_dict(): a measured value against a limit, its verdict and
    what it decided on (packager/core/gates.py)."""

    name: str
    value: Any
    limit: Any
    passed: bool = Field(description="true only for the verdict pass")
    status: CheckStatus
    reason: str
    verdict: GateVerdict | None = Field(description="null only for a check that did not run")
    decided_on: Basis = Field(description="the point estimate, or a bound of ci95")
    ci95: tuple[float, float] | None = Field(
        description="the metric's 95% interval, where packager has one"
    )

    @model_validator(mode="after")
    def _consistent(self) -> CheckRecord:
        if self.passed != (self.status == CheckStatus.passed):
            raise ValueError(f"check {self.name}: passed={self.passed} but status {self.status}")
        if (self.verdict is None) != (self.status == CheckStatus.not_run):
            raise ValueError(f"check {self.name}: verdict {self.verdict} but status {self.status}")
        if self.verdict is not None and self.passed != (self.verdict == GateVerdict.passed):
            raise ValueError(f"check {self.name}: passed={self.passed} but verdict {self.verdict}")
        return self


class Gates(_Closed):
    passed: bool
    checks: list[CheckRecord]

    @model_validator(mode="after")
    def _all_passed(self) -> Gates:
        if self.passed != (bool(self.checks) and all(c.passed for c in self.checks)):
            raise ValueError("gates.passed must be true exactly when there are checks and all pass")
        return self
