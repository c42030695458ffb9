"""The documents a build writes, typed: report.json, runtime.json, manifest.json and refusal.json
in a bundle, selftest.json (the golden set's tolerance), and the acceptance record the bundle's
own `predict.py --self-test --record` writes at a hospital.

The models are the single source of truth for these files' shape (their status words are the
enums of packager/core/status.py): every producer in packager/ validates its document here right
before writing it (`write`, `checked_text`), so a build that would write a document outside its
model fails instead. The bytes stay those of
`json.dumps(data, indent=2, sort_keys=True)`, so readers that treat the files as plain JSON keep
working. The JSON Schemas in docs/schemas/ are generated from these models
(`python -m packager.core.documents docs/schemas`), so a hospital can check a file with standard
tools; a test keeps them equal to what the models give.

The acceptance record is written by packager/shipped/selftest.py, which ships to hospitals and
may import numpy and the runtime only: its model lives here and checks the record when
`packager selftest` or a build reads it back.

Sections whose keys belong to something else (a runtime's info(), a target's details, the
config, the clinical evidence) stay open; everything packager itself decides is closed
(an unknown key is an error)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, dataclass_transform

import pydantic.dataclasses
from pydantic import BaseModel, ConfigDict, Field, model_validator

from packager.core.metrics import Clinical as Metrics
from packager.core.status import (
    Basis,
    BenchStatus,
    CheckStatus,
    GateVerdict,
    ManifestStatus,
    OutputKind,
    RefusalStatus,
    ReportStatus,
    StepStatus,
    Verdict,
)

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


# ---------------------------------------------------------------------------------------------
# Shared parts


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


# ---------------------------------------------------------------------------------------------
# report.json


class ModelCard(_Closed):
    """[model.card] plus [model] author and license and [labels] threshold_rationale."""

    intended_use: str
    indications: list[str]
    contraindications: list[str]
    author: str
    license: str
    threshold_rationale: str


class ReportModel(_Closed):
    name: str
    version: str
    source_sha256: str
    batch: int | str = Field(description='the fixed batch size, or "dynamic"')
    gflops_per_sample: float | None
    params: int | None
    card: ModelCard | None = Field(None, description="null: written by an older packager")


class Validation(_Closed):
    runtime: RuntimeInfo | None = Field(description="what ran validation; null: nothing did")
    proxy: str | None = Field(description="the stand-in runtime's label, when one was used")
    not_validated: str = Field(description="why the target's own runtime did not validate it")
    kind: str | None = Field(None, description="the runner kind used: main, or a proxy's")
    limitations: list[str] = Field(
        default_factory=list, description="what validation here cannot show about the devices"
    )


@_part
class ClinicalMetrics(Metrics):
    """packager.core.metrics.Clinical at the decision threshold, on one split."""

    split: str = Field(kw_only=True)
    output: OutputKind = Field(kw_only=True)


@_part
class Clinical(ClinicalMetrics):
    """The clinical metrics of a build, plus the evidence for its sign-off."""

    evidence: dict[str, Any] = Field(
        kw_only=True, description="packager/reports/evidence.py: paired test, subgroups…"
    )


class SelftestMeasured(_Closed):
    repeat_max_abs_diff: float
    batch1_max_abs_diff: float


class BuildHostSelftest(_Closed):
    verdict: Verdict | None = Field(description="the record's verdict; null: no record written")
    line: str


class SelftestSummary(_Closed):
    """selftest.json, and report.json's selftest once the build host replayed it."""

    schema_version: Literal[1]
    precision: str
    positive_index: int
    threshold: float
    floor: float
    formats: list[str] = Field(
        description="the file formats the bundle reads; selftest.npz holds an encoded image file "
        "of each, replayed through the shipped preprocess.py"
    )
    recorded_on: str
    proxy: str | None
    runtime: RuntimeInfo
    batch_size: int
    tolerance: float
    measured: SelftestMeasured
    cases: dict[str, int] = Field(
        description="cases per kind: synthetic, near-threshold, validation (model inputs) and "
        "one kind per raw image file form (png 8-bit, dicom MONOCHROME1 16-bit window, ...)"
    )
    build_host: BuildHostSelftest | None = None


class SelftestNotRun(_Closed):
    status: Literal[CheckStatus.not_run]
    reason: str


class Latency(_Closed):
    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    p50_ci95: list[float] | None = Field(None, description="bootstrap over windows")
    p95_ci95: list[float] | None = Field(None, description="bootstrap over windows")


class HostState(_Closed):
    """packager.core.hostinfo.host_state(): what else the host did during the benchmark."""

    loadavg_before: float | None
    loadavg_after: float | None
    steal_pct: float | None
    iowait_pct: float | None
    others_cpu_pct: float | None = Field(description="other processes' share of all cores")
    governor: str | None
    isa_flags: list[str]
    noisy: bool = Field(description="others_cpu_pct or steal_pct past its limit")
    limits: dict[str, float]


class BenchRow(_Closed):
    batch_size: int
    iterations: int
    windows: int | None = Field(None, description="measurement windows (null: older packager)")
    stable: bool | None = Field(
        None, description="the last 3 windows agreed within [bench] stability"
    )
    latency_ms: Latency
    throughput_sps: float
    throughput_ci95: list[float] | None = Field(None, description="bootstrap over windows")
    throughput_mode: Literal["sync", "async"]
    runtime_latency_ms: Latency | None = None
    latency_samples_ms: list[float] | None = None
    sync_throughput_sps: float | None = None
    peak_rss_mb: float


class BenchRun(_Closed):
    """packager.runtime.bench.measure() on one runner configuration."""

    load_time_ms: float
    peak_rss_mb: float
    baseline_rss_mb: float
    model_rss_mb: float
    serving_memory_mb: float
    runtime: RuntimeInfo
    batches: list[BenchRow]
    host_state: HostState | None = Field(None, description="null: older packager")


class BenchVariant(BenchRun):
    label: str


class BenchHost(Host):
    runtime_versions: dict[str, str | None] | None = None


class Best(_Closed):
    batch_size: int
    throughput_sps: float


class OpenLoopPoint(_Closed):
    rate: float = Field(description="offered requests/s (Poisson)")
    requests: int
    achieved_rate: float = Field(description="requests served per second of the schedule")
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    dropped: int = Field(description="still unserved when the run was cut off")


class OpenLoop(_Closed):
    """packager.runtime.openloop.search(): latency from each request's scheduled arrival."""

    sla_ms: float
    max_batch: int
    max_delay_ms: float
    seconds_per_rate: float
    saturation_sps: float = Field(description="closed-loop samples/s at max_batch")
    max_rate: float | None = Field(description="highest achieved rate with p95 <= sla_ms")
    p95_ms_at_max_rate: float | None
    share_of_saturation: float | None
    points: list[OpenLoopPoint]
    runtime: RuntimeInfo | None = None


class ProfileOp(_Closed):
    name: str
    type: str
    ms_per_call: float
    share: float = Field(description="of the profiled total")


class Profile(_Closed):
    """packager.runtime.profile.top_operators(): the runtime's own profiler at batch 1."""

    status: Literal["ok"]
    calls: int
    batch_size: int
    nodes: int
    total_ms_per_call: float
    top: list[ProfileOp]
    file: str = Field(description="the raw profile in the bundle")


class ProfileNotRun(_Closed):
    status: Literal["not-run"]
    reason: str


class Benchmark(BenchRun):
    status: Literal[BenchStatus.ok]
    profile: Annotated[Profile | ProfileNotRun, Field(discriminator="status")] | None = None
    open_loop: OpenLoop | None = Field(None, description="[bench.open_loop] enabled only")
    reason: str
    host: BenchHost
    best: Best | None
    variants: list[BenchVariant]
    model_size_mb: float


class NoBenchmark(_Closed):
    status: Literal[BenchStatus.skipped, BenchStatus.failed]
    reason: str
    host: Host
    model_size_mb: float


class Report(_Closed):
    """report.json: everything a bundle's build found, and its verdict."""

    model_config = ConfigDict(title="packager report.json")

    schema_version: Literal[1]
    target: str
    summary: str
    precision: str
    status: ReportStatus
    reason: str
    built_at: str | None = Field(
        None, description="SOURCE_DATE_EPOCH as ISO 8601 UTC; null when the build set none"
    )
    model: ReportModel
    validation: Validation
    clinical: Clinical | None = Field(description="null: not validated on this host")
    gates: Gates
    selftest: SelftestSummary | SelftestNotRun
    benchmark: Annotated[Benchmark | NoBenchmark, Field(discriminator="status")]
    code: dict[str, str] = Field(description="sha256 of each code file the bundle runs")
    details: dict[str, Any] = Field(description="the target's own section")
    notes: list[str]
    steps: list[Step]
    precision_search: dict[str, Any] | None = Field(
        None, description="the candidates table of a precision search (precision = auto)"
    )

    @model_validator(mode="after")
    def _verdict(self) -> Report:
        # The verdict follows the gates: a failed gate fails; a pass with nothing run is not one.
        if self.status == ReportStatus.passed and not self.gates.passed:
            raise ValueError("status passed with gates that did not all pass")
        if self.status == ReportStatus.passed and self.clinical is None:
            raise ValueError("status passed without clinical validation")
        return self


# ---------------------------------------------------------------------------------------------
# runtime.json


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


# ---------------------------------------------------------------------------------------------
# manifest.json


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


# ---------------------------------------------------------------------------------------------
# refusal.json


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


# ---------------------------------------------------------------------------------------------
# The site validation report (`packager validate` on a site's own data)


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
    positive: str
    threshold: float
    output: OutputKind


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

    @model_validator(mode="after")
    def _passed_only_on_pass(self) -> SiteValidation:
        passed = self.status == ReportStatus.passed
        if passed != (self.verdict == "pass") or passed != self.gates.passed:
            raise ValueError(f"status {self.status} with verdict {self.verdict}")
        rows = [r for values in self.subgroups.values() for r in values.values()]
        if passed and any(r.verdict != "pass" for r in rows):
            raise ValueError("status passed with a subgroup that does not pass")
        return self


# ---------------------------------------------------------------------------------------------
# The acceptance record (written by packager/shipped/selftest.py)


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


# ---------------------------------------------------------------------------------------------
# Writing, and the published schemas

SCHEMAS: dict[str, type[BaseModel]] = {
    "report": Report,
    "runtime": Runtime,
    "manifest": Manifest,
    "acceptance": Acceptance,
    "refusal": Refusal,
    "selftest": SelftestSummary,
    "site-validation": SiteValidation,
}


def dumps(data: dict[str, Any]) -> str:
    """The one layout of every document packager writes."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def checked_text(model: type[BaseModel], data: dict[str, Any]) -> str:
    """`data` in the one layout, validated against `model` (a mismatch is packager's bug:
    pydantic's error, with its traceback). Every writer of a document goes through here."""
    text = dumps(data)
    model.model_validate_json(text)  # the text itself: keys are strings, tuples are arrays
    return text


def write(path: Path, model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """Validate `data` against `model`, then write it. Returns `data` unchanged."""
    path.write_text(checked_text(model, data))
    return data


def read(path: Path, model: type[BaseModel]) -> dict[str, Any]:
    """A document read back as the plain dict its readers use, validated against `model`
    (pydantic.ValidationError when it is not one; json.JSONDecodeError when not JSON)."""
    text = path.read_text()
    model.model_validate_json(text)
    return json.loads(text)


def schema_name(model: type[BaseModel]) -> str:
    """The name of `model`'s published schema: NAME.schema.json."""
    return next(k for k, m in SCHEMAS.items() if m is model)


def load(path: Path, model: type[BaseModel], fix: str) -> dict[str, Any]:
    """A document handed to packager (a bundle's, a record): the plain dict, or a one-line
    UserError naming the first mismatch with its model, where to get its JSON Schema, and
    `fix`."""
    from pydantic import ValidationError

    from packager.core.errors import UserError

    try:
        return read(path, model)
    except ValidationError as exc:
        raise UserError(mismatch(path, model, exc, fix)) from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from None


def mismatch(where: Path, model: type[BaseModel], exc: Any, fix: str) -> str:
    """The one line for a pydantic.ValidationError of `model` on the document at `where`."""
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return f"{where} is not valid JSON ({first['msg']}); {fix}"
    at = ".".join(str(p) for p in first["loc"]) or "top level"
    name = schema_name(model)
    # docs/ is not installed: name the command that writes the schema instead of a repo path.
    return (
        f"{where} is not a packager {name} document ({at}: {first['msg']}; its JSON Schema: "
        f"`python -m packager.core.documents DIR` writes DIR/{name}.schema.json); {fix}"
    )


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"$schema": SCHEMA_DIALECT, **model.model_json_schema()}


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, model in SCHEMAS.items():
        path = folder / f"{name}.schema.json"
        path.write_text(dumps(json_schema(model)))
        paths.append(path)
    return paths
