"""report.json: everything a bundle's build found, and its verdict."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from packager.core.documents.base import _Closed, _part
from packager.core.documents.parts import Gates, Host, RuntimeInfo, Step
from packager.core.metrics import Clinical as Metrics
from packager.core.status import (
    BenchStatus,
    CheckStatus,
    OutputKind,
    ReportStatus,
    Verdict,
)


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
    finding: str | None = Field(
        None, kw_only=True, description="multilabel: the finding these metrics are (the worst)"
    )
    findings: dict[str, dict[str, Any]] | None = Field(
        None,
        kw_only=True,
        description="multilabel: each finding's metrics (as above, one finding against its "
        "absence, at its own threshold) and evidence",
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
    positive_index: int | None = Field(description="null for a multi-label model")
    threshold: float
    thresholds: dict[str, float] | None = Field(
        None, description="multilabel: each finding's threshold the golden set was recorded at"
    )
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


class OpenLoopBatcher(_Closed):
    max_batch: int
    max_rate: float | None
    p95_ms_at_max_rate: float | None
    saturation_sps: float = Field(description="closed-loop samples/s at this max_batch")


class OpenLoop(_Closed):
    """packager.runtime.openloop.best_batcher(): latency from each request's scheduled arrival,
    with the batcher setting (up to [bench.open_loop] max_batch, or 1) that served the most."""

    sla_ms: float
    max_batch: int = Field(description="the batcher's largest batch in the setting shown")
    max_delay_ms: float
    seconds_per_rate: float
    saturation_sps: float = Field(
        description="closed-loop samples/s at [bench.open_loop] max_batch: the ceiling"
    )
    max_rate: float | None = Field(description="highest achieved rate with p95 <= sla_ms")
    p95_ms_at_max_rate: float | None
    share_of_saturation: float | None
    points: list[OpenLoopPoint] = Field(description="every rate tried in the setting shown")
    batchers: list[OpenLoopBatcher] | None = Field(
        None, description="each batcher setting tried, [bench.open_loop] max_batch first"
    )
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
    reused: str | None = Field(
        None,
        description="null: measured by this build; else the build cache entry it was reused "
        "from and when it was measured (same bundle files, [bench], images and host kind)",
    )


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
