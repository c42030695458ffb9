"""The site validation report (`packager validate` on a site's own data)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from packager.core.documents.base import _Closed
from packager.core.documents.manifest import Tool
from packager.core.documents.parts import CheckRecord, Host, RuntimeInfo
from packager.core.documents.report import ClinicalMetrics
from packager.core.status import (
    OutputKind,
    ReportStatus,
)


class BuildClinical(_Closed):
    """The bundle's report.json clinical numbers (the reference for the site's drop gates)."""

    n: int | None
    positives: int | None
    sensitivity: float | None
    reference_sensitivity: float | None
    specificity: float | None
    split: str | None


class SiteBundle(_Closed):
    path: str
    name: str
    version: str
    target: str
    precision: str | None
    manifest_sha256: str
    signed: bool
    build_status: ReportStatus | None
    build_clinical: BuildClinical


class SiteGrouping(_Closed):
    source: Literal["--group-by", "the bundle's [data] group_by"]
    columns: list[str]
    not_found: list[str] = Field(description="the bundle's group columns this data lacks")


class SiteLabels(_Closed):
    """Where the site's labels came from, and what its row indexes point into."""

    source: Literal["--labels", "labels.csv in the data folder", "class folders", "npz"]
    file: str | None = Field(description="the labels CSV's file name (no folder)")
    sha256: str | None = Field(description="the labels CSV's sha256")
    statement: str
    row_index: str = Field(description="what errors' and the .npz `row` indexes point into")


class SiteData(_Closed):
    path: str
    split: str
    n: int
    positives: int
    sha256: str
    same_as_build: bool
    metadata_columns: list[str] = Field(
        description="the labels.csv columns read (only the group columns; the rest are dropped)"
    )
    group_by: SiteGrouping
    labels: SiteLabels


class Decision(_Closed):
    positive: str | None = Field(description="null for a multi-label bundle")
    threshold: float
    output: OutputKind
    thresholds: dict[str, float] | None = Field(
        None, description="multilabel: each finding's threshold"
    )


SiteVerdict = Literal["pass", "fail", "insufficient evidence", "undefined"]


class SiteCheck(CheckRecord):
    """A site gate line: every one ran, so every one has a verdict."""

    verdict: SiteVerdict


class SubgroupRow(_Closed):
    n: int
    positives: int
    negatives: int
    sensitivity: float | None
    sensitivity_ci95: tuple[float, float] | None = Field(description="95% Wilson interval")
    specificity: float | None
    specificity_ci95: tuple[float, float] | None = Field(description="95% Wilson interval")
    verdict: SiteVerdict = Field(description="the worst verdict of its gates")
    gates: list[SiteCheck] = Field(description="the site gates on this subgroup's positives")


class NotApplied(_Closed):
    name: str
    limit: Any
    reason: str


class SiteGates(_Closed):
    passed: bool
    decided_on: Literal["the 95% interval", "the point estimate"] = Field(
        description='[gates] decide_on: "ci" (the default at a site) or "point"'
    )
    checks: list[SiteCheck]
    not_applied: list[NotApplied] = Field(description="the bundle's gates this data cannot test")

    @model_validator(mode="after")
    def _all_passed(self) -> SiteGates:
        if self.passed and not (self.checks and all(c.passed for c in self.checks)):
            raise ValueError("gates.passed must be false when a check does not pass")
        return self


class SiteRate(_Closed):
    """A proportion with its 95% Wilson interval; null value and interval when n is 0."""

    value: float | None
    ci95: tuple[float, float] | None
    hits: int
    n: int


class SiteRates(_Closed):
    sensitivity: SiteRate
    specificity: SiteRate


class SiteErrors(_Closed):
    """Row indexes (data.labels.row_index), never paths or identifiers."""

    false_positives: list[int]
    false_negatives: list[int]


class SiteFinding(_Closed):
    clinical: ClinicalMetrics
    rates: SiteRates
    errors: SiteErrors


class Throughput(_Closed):
    images_per_s: float | None
    read_s: float
    preprocess_s: float
    wall_s: float


class SiteValidation(_Closed):
    """site-validation-<name>-<version>-<target>.json: a site's own data through the shipped
    bundle, gated; the bundle itself is left as shipped."""

    model_config = ConfigDict(title="packager site validation report")

    schema_version: Literal[1]
    kind: Literal["site-validation"]
    status: Literal[ReportStatus.passed, ReportStatus.failed]
    verdict: SiteVerdict = Field(description="the worst verdict of the gates; passed only if pass")
    reason: str
    validated_at: str = Field(description="UTC, ISO 8601")
    bundle: SiteBundle
    data: SiteData
    decision: Decision
    clinical: ClinicalMetrics
    rates: SiteRates
    errors: SiteErrors
    subgroups: dict[str, dict[str, SubgroupRow]] = Field(description="per group column, value")
    gates: SiteGates
    runtime: RuntimeInfo
    host: Host
    throughput: Throughput
    tool: Tool
    finding: str | None = Field(
        None, description="multilabel: the finding clinical/rates/errors are (lowest sensitivity)"
    )
    findings: dict[str, SiteFinding] | None = Field(
        None,
        description="multilabel: each finding's numbers; its gate lines are in gates.checks "
        "and its subgroups in subgroups, named [finding=<name>]",
    )

    @model_validator(mode="after")
    def _passed_only_on_pass(self) -> SiteValidation:
        passed = self.status == ReportStatus.passed
        if passed != (self.verdict == "pass") or passed != self.gates.passed:
            raise ValueError(f"status {self.status} with verdict {self.verdict}")
        rows = [r for values in self.subgroups.values() for r in values.values()]
        if passed and any(r.verdict != "pass" for r in rows):
            raise ValueError("status passed with a subgroup that does not pass")
        return self
