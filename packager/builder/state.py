"""One target's build as the stages fill it in (packager.builder.stages): typed while it is being
built, and turned into report.json's dict in one place, `BuildState.dump` (checked against
packager.core.documents.Report when written). `BuildState.load` reads a report.json back, for
`packager validate`, which completes a published bundle's report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from packager.core.documents import Step
from packager.core.status import CheckStatus, GateVerdict, ReportStatus, ResultStatus, StepStatus
from packager.core.target import Check


@dataclass
class ValidationInfo:
    """report.json's `validation`: what ran validation, or why nothing did."""

    runtime: dict[str, Any] | None
    not_validated: str = ""
    proxy: str | None = None
    kind: str | None = None  # the runner kind: "main", or a proxy's
    limitations: list[str] = field(default_factory=list)


def gates_passed(checks: list[Check]) -> bool:
    """report.json's gates pass when there are checks and every one passed."""
    return bool(checks) and all(c.passed for c in checks)


def failure(c: Check) -> str:
    """A gate that did not pass, in a few words: `insufficient evidence` and `undefined` say so
    and why, never only a value that looks like a pass."""
    if c.verdict == GateVerdict.undefined:
        return f"{c.name} {c.reason} (limit {c.limit})"
    if c.verdict == GateVerdict.insufficient:
        return f"{c.name} = {c.value} (limit {c.limit}): insufficient evidence, {c.reason}"
    if c.value is None:
        return f"{c.name} {c.reason} (limit {c.limit})"
    return f"{c.name} = {c.value} (limit {c.limit})"


def verdict(checks: list[Check], v: ValidationInfo) -> tuple[ReportStatus, str]:
    """The verdict and its reason from the gates. A check that did not run is never a pass, and
    not a failure either: it leaves the bundle not validated, with the reason."""
    not_run = [c for c in checks if c.status == CheckStatus.not_run]
    failed = [c for c in checks if not c.passed and c not in not_run]
    if failed:
        return ReportStatus.failed, "gate failed: " + "; ".join(map(failure, failed))
    if v.not_validated or not_run:
        why = [v.not_validated] if v.not_validated else []
        why += [f"{c.name} not run ({c.reason})" for c in not_run]
        proxy = f" (proxy check passed on {v.proxy})" if v.proxy else ""
        return ReportStatus.not_validated, f"not validated: {'; '.join(why)}{proxy}"
    return ReportStatus.passed, "every gate passed on the target's own runtime"


@dataclass
class BuildState:
    target: str
    summary: str
    precision: str
    built_at: str | None
    model: dict[str, Any]
    validation: ValidationInfo
    clinical: dict[str, Any] | None = None
    checks: list[Check] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    code: dict[str, str] = field(default_factory=dict)
    selftest: dict[str, Any] | None = None
    benchmark: dict[str, Any] | None = None
    precision_search: dict[str, Any] | None = None
    steps: list[Step] = field(default_factory=list)
    status: ReportStatus | None = None  # set by finish
    reason: str = ""
    inputs_sha256: str | None = None  # packager.builder.inputs.inputs_key: manifest.json only

    @property
    def gates_passed(self) -> bool:
        return gates_passed(self.checks)

    def step(self, name: str, status: StepStatus, reason: str = "") -> None:
        self.steps.append(Step(name, status, reason))

    def finish(self) -> None:
        """The last part of every report: its verdict and reason, from the gates."""
        self.status, self.reason = verdict(self.checks, self.validation)

    def dump(self) -> dict[str, Any]:
        """report.json, as a plain dict (documents.Report checks it when it is written)."""
        validation = asdict(self.validation)
        report = {
            "schema_version": 1,
            "target": self.target,
            "summary": self.summary,
            "precision": self.precision,
            "built_at": self.built_at,
            "model": self.model,
            "validation": validation,
            "clinical": self.clinical,
            "gates": {
                "passed": gates_passed(self.checks),
                "checks": [c.to_dict() for c in self.checks],
            },
            "details": self.details,
            "notes": self.notes,
            "code": self.code,
            "selftest": self.selftest,
            "benchmark": self.benchmark,
            "steps": [asdict(s) for s in self.steps],
        }
        if self.status is not None:
            report |= {"status": self.status, "reason": self.reason}
        if self.precision_search is not None:
            report["precision_search"] = self.precision_search
        return report

    @classmethod
    def load(cls, report: dict[str, Any]) -> BuildState:
        """A report.json read back (already checked against documents.Report)."""
        v = report["validation"]
        return cls(
            target=report["target"],
            summary=report["summary"],
            precision=report["precision"],
            built_at=report.get("built_at"),
            model=report["model"],
            validation=ValidationInfo(
                v["runtime"],
                v["not_validated"],
                v["proxy"],
                v.get("kind"),
                v.get("limitations", []),
            ),
            clinical=report["clinical"],
            checks=[Check.from_dict(c) for c in report["gates"]["checks"]],
            details=report["details"],
            notes=report["notes"],
            code=report["code"],
            selftest=report["selftest"],
            benchmark=report["benchmark"],
            precision_search=report.get("precision_search"),
            steps=[Step(s["name"], StepStatus(s["status"]), s["reason"]) for s in report["steps"]],
            status=ReportStatus(report["status"]) if "status" in report else None,
            reason=report.get("reason", ""),
        )


@dataclass
class TargetResult:
    """What a build of one target ended with (one per target of `packager build`)."""

    target: str
    status: ResultStatus
    reason: str = ""
    bundle: str | None = None
    report: dict[str, Any] | None = field(default=None, repr=False)
    log: str | None = None  # a refused target's full converter / checker log

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "status": self.status,
            "reason": self.reason,
            "bundle": self.bundle,
            "log": self.log,
        }
