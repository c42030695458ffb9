"""The status words of every document and result packager writes, one definition per word.

Free of pydantic (and of the rest of packager), so errors.py and every module can import it;
packager/core/documents/__init__.py types the documents with these enums. A word compares, hashes and
serializes as its plain string, so readers of the JSON files may compare with plain strings.
The wider sets (a build result, a manifest, a step) are derived from the narrower ones rather
than restating their members."""

from __future__ import annotations

from enum import Enum


class Words(str, Enum):
    """A status word: compares and serializes as its plain string."""

    def __str__(self) -> str:
        return str(self.value)

    def __hash__(self) -> int:  # equal to its string, so it also finds dict keys and set members
        return str.__hash__(self)


class CheckStatus(Words):
    """One gate line: a check that did not run is never counted as passed."""

    passed = "passed"
    failed = "failed"
    not_run = "not-run"


class ReportStatus(Words):
    """A bundle's verdict (report.json status)."""

    passed = "passed"
    failed = "failed"
    not_validated = "not-validated"


class RefusalStatus(Words):
    """A target that cannot take the model (refusal.json)."""

    unsupported_model = "unsupported-model"
    conversion_failed = "conversion-failed"


class BenchStatus(Words):
    """The benchmark step's outcome (report.json benchmark.status)."""

    ok = "ok"
    skipped = "skipped"
    failed = "failed"


class Verdict(Words):
    """The acceptance record's verdict (exit codes 0, 1 and 3 of `predict.py --self-test`)."""

    accepted = "accepted"
    rejected = "rejected"
    not_run = "not-run"


class GateVerdict(Words):
    """One gate's verdict. Only `pass` passes: `insufficient evidence` (the point estimate meets
    the limit, its 95% bound does not) and `undefined` (the metric's denominator is empty) fail
    closed, like `fail`."""

    passed = "pass"
    failed = "fail"
    insufficient = "insufficient evidence"
    undefined = "undefined"


class Basis(Words):
    """What a gate decided on ([gates] decide_on): the point estimate, or the bound of its 95%
    interval on the gate's side (lower for a min_ gate, upper for a max_ gate)."""

    point = "point"
    lower = "95% lower bound"
    upper = "95% upper bound"
    every = "every output"


class OutputKind(Words):
    logits = "logits"  # a softmax over the classes
    probabilities = "probabilities"
    sigmoid_logits = "sigmoid-logits"  # multi-label: a sigmoid of each finding


def _union(name: str, doc: str, *parts: type[Words], **more: str) -> type[Words]:
    """An enum of every member of `parts` (a word shared by two parts once), plus `more`."""
    members = {m.name: m.value for part in parts for m in part} | more
    words = Words(name, members, module=__name__, qualname=name)  # type: ignore[call-overload]
    words.__doc__ = doc
    return words  # type: ignore[no-any-return]


ResultStatus = _union(
    "ResultStatus",
    "One target's outcome of `packager build` (its --json results[].status): a bundle's "
    "verdict, a refusal, or a target that is unavailable here or raised an error.",
    ReportStatus,
    RefusalStatus,
    unavailable="unavailable",
    error="error",
)
ManifestStatus = _union(
    "ManifestStatus",
    "report.json's status, or `staged` in the manifest the self-test checks before the report "
    "is finished.",
    ReportStatus,
    staged="staged",
)
StepStatus = _union(
    "StepStatus",
    "A build step's outcome (report.json steps[].status); the self-test step carries its "
    "check's status.",
    BenchStatus,
    CheckStatus,
)
