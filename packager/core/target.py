"""The Target interface: a target package reads top to bottom as options, availability,
conversion (its __init__.py) and the runtime that ships (its runtime.py, copied verbatim into
every bundle and loaded by the validation runner itself). Everything else (validation, benchmark,
gates, bundle) is shared code in packager/."""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from packager.core.config import DataConfig, GatesConfig, LabelsConfig, ModelConfig
from packager.core.data import Dataset
from packager.core.model import ModelInfo
from packager.core.progress import Progress
from packager.core.status import Basis, CheckStatus, GateVerdict
from packager.shipped.preprocess import Preprocess

# The precision of a bundle whose source model was quantized before it reached packager.
PRE_QUANTIZED = "int8 (pre-quantized)"
# What a QOperator-format model needs for targets that only read float or QDQ graphs.
REEXPORT_QDQ = (
    "re-export it in QDQ format (onnxruntime.quantization.quantize_static(..., "
    "quant_format=QuantFormat.QDQ) from the float model)"
)


@dataclass
class Status:
    ok: bool
    reason: str = ""
    log: str = field(default="", repr=False)  # the checker's full report, kept on a refusal

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason}


@dataclass
class Availability:
    """What this host can do for a target; each 'no' carries the reason."""

    build: Status
    validate: Status
    bench: Status

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k).to_dict() for k in ("build", "validate", "bench")}


@dataclass
class Check:
    """One gate line: a measured value against a limit, with its verdict and what it decided on
    (the point estimate or a 95% bound; `ci95` is the interval where there is one). Without a
    verdict it is `pass` or `fail` from `passed`; with one, `passed` is true only for `pass`. A
    check that could not run says so (`ran=False`, status "not-run", no verdict, with the
    reason) and never counts as passed."""

    name: str
    value: Any
    limit: Any
    passed: bool
    reason: str = ""
    ran: bool = True
    verdict: GateVerdict | None = None
    decided_on: Basis = Basis.point
    ci95: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not self.ran:
            self.passed, self.verdict = False, None
        elif self.verdict is None:
            self.verdict = GateVerdict.passed if self.passed else GateVerdict.failed
        else:
            self.passed = self.verdict == GateVerdict.passed

    @property
    def status(self) -> CheckStatus:
        if not self.ran:
            return CheckStatus.not_run
        return CheckStatus.passed if self.passed else CheckStatus.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "passed": self.passed,
            "status": self.status,
            "reason": self.reason,
            "verdict": self.verdict,
            "decided_on": self.decided_on,
            "ci95": None if self.ci95 is None else [float(x) for x in self.ci95],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Check:
        """A check read back from report.json or the build cache (to_dict's output)."""
        ci = d.get("ci95")
        return cls(
            d["name"],
            d["value"],
            d["limit"],
            d["passed"],
            d.get("reason", ""),
            ran=d.get("status") != CheckStatus.not_run,
            verdict=None if d.get("verdict") is None else GateVerdict(d["verdict"]),
            decided_on=Basis(d.get("decided_on", Basis.point)),
            ci95=None if ci is None else (float(ci[0]), float(ci[1])),
        )


@dataclass(frozen=True)
class BuildContext:
    """What a target's conversion gets to see: its own Options and the parts of the config a
    conversion uses, never the whole config."""

    model_config: ModelConfig  # [model]: name, version, description, author, license
    labels: LabelsConfig
    data: DataConfig  # the splits (calibration, validation) and the seed
    gates: GatesConfig  # what INT8 accuracy control must hold
    timeout_s: float  # one worker job's limit ([bench] timeout_s)
    options: Any  # the target's typed Options
    model_path: Path
    model: ModelInfo
    preprocess: Preprocess
    validation: Dataset  # raw images + labels of the validation split
    x: np.ndarray  # the validation images, preprocessed
    output_kind: str  # what the model's output holds: "logits" | "probabilities"
    reference: np.ndarray  # the reference target's probabilities on them
    dataset: Callable[[str], Dataset]  # another split, raw images + labels
    calibration: Callable[[], np.ndarray]  # preprocessed images from a non-validation split
    progress: Progress


@dataclass
class BuildOutput:
    """What a target's conversion produced in the staging directory."""

    precision: str
    runtime_config: dict[str, Any] = field(default_factory=dict)  # saved in runtime.json
    details: dict[str, Any] = field(default_factory=dict)  # target section of report.json
    notes: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)  # target-specific gates
    artifacts: list[str] = field(default_factory=list)  # the deployable model files (for size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "runtime_config": self.runtime_config,
            "details": self.details,
            "notes": self.notes,
            "checks": [c.to_dict() for c in self.checks],
            "artifacts": self.artifacts,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BuildOutput:
        return cls(**(d | {"checks": [Check.from_dict(c) for c in d["checks"]]}))


@dataclass(frozen=True)
class Candidate:
    """One point of a target's search space: Options overrides, and why it cannot be tried on
    this host ("" when it can)."""

    label: str
    overrides: dict[str, Any]
    unavailable: str = ""


@dataclass(frozen=True)
class Diagnosis:
    """Why a failed INT8 candidate lost its gate, layer by layer (report.json's
    precision_search.diagnosis), and the mixed-precision candidate it proposes, if any."""

    found: dict[str, Any]
    follow_up: Candidate | None = None


@dataclass
class Proxy:
    """A stand-in runtime when the target's own cannot run here (clearly labelled in reports)."""

    runner: str  # name passed to Target.runner(kind=...)
    label: str


def _runs() -> Status:
    return Status(True)


@dataclass
class CrossCheck:
    """A second runner on the same bundle, declared by a target and run by the build (through
    the worker, like validation) on the validation split. With a flip limit, its positive-class
    decisions are compared with the validated ones: one gate line, failed above the limit and
    "not-run" (never passed) when `available()` says no or the runtime is missing. Without one,
    its outputs are only measured and handed to Target.cross_checked."""

    name: str  # the gate line
    runner: str  # a `kind` the target's runtime.py open_runtime knows
    max_flips: int | None = None  # decisions allowed to differ...
    max_flip_rate: float | None = None  # ...or ceil(rate * n) of them
    inputs: Literal["tensors", "images"] = "tensors"  # preprocessed tensors, or raw uint8 images
    options: dict[str, Any] = field(default_factory=dict)  # over the build's runner options
    output: Literal["model", "probabilities"] = "model"  # "model": the model's own output kind
    value: Literal["flips", "agreement"] = "flips"  # what the gate line shows
    available: Callable[[], Status] = _runs  # why it cannot run on this host, if it cannot
    # Auxiliary model files the runner reads instead of the bundle's: written by scratch(ctx,
    # folder), which returns the runner options there; the bundle's runtime.py runs on them.
    scratch: Callable[[BuildContext, Path], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.max_flips is not None and self.max_flip_rate is not None:
            raise ValueError(
                f"cross-check {self.name!r}: give max_flips or max_flip_rate, not both"
            )

    def allowed(self, n: int) -> int | None:
        """Flipped decisions allowed among `n`; None: measured only, no gate."""
        if self.max_flips is not None:
            return self.max_flips
        return None if self.max_flip_rate is None else math.ceil(self.max_flip_rate * n)


@dataclass
class CrossCheckResult:
    """What the build measured for one cross-check, for Target.cross_checked."""

    check: CrossCheck
    outputs: np.ndarray  # the runner's raw outputs, (N, -1)
    probs: np.ndarray | None  # as probabilities; None for a measured-only cross-check
    flipped: list[int]  # indices whose decision differs from the validated runner's
    max_abs_diff: float  # max |p| difference of the positive class from the validated runner's
    runtime: dict[str, Any]  # the runner's info()
    notes: list[str] = field(default_factory=list)  # appended to the gate line's reason


class Target(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[
        type
    ]  # a @packager.core.schema.typed dataclass: [targets.<name>] validates on it
    int8_option: ClassVar[tuple[str, Any] | None] = None  # what --int8 sets, if supported
    # The Options field that "auto" (`--precision auto`) hands to the precision search
    # (packager.builder.search), which tries each Candidate of search_space; None: no search.
    search_option: ClassVar[str | None] = None
    shipped: ClassVar[tuple[str, ...]] = ()  # packager/shipped modules runtime.py imports
    is_reference: ClassVar[bool] = False  # the one every other target is compared with
    # What validation on a build host cannot show about the devices the bundle runs on: listed
    # under "Not validated" on every sign-off page of this target.
    limitations: ClassVar[tuple[str, ...]] = ()

    def source_options(self, model: Path) -> dict[str, Any]:
        """Runner options that run the source model itself (the reference target only)."""
        raise TypeError(f"{self.name} is not the reference target")

    @classmethod
    def runtime_source(cls) -> Path:
        """The target's runtime.py: shipped verbatim, and what every runner loads."""
        return Path(inspect.getfile(cls)).with_name("runtime.py")

    @abstractmethod
    def availability(self) -> Availability: ...

    @abstractmethod
    def build(self, ctx: BuildContext, stage: Path) -> BuildOutput: ...

    def accepts(self, model: ModelInfo, options: Any = None) -> Status:
        """Whether this target can take `model` (with these Options, or its defaults), checked
        cheaply before any conversion: operator support lists, opset, data types. A 'no' names
        what is refused, in one line. Here: INT8 quantization of a model already quantized."""
        q = model.quantization
        if q and self.int8_option and options is not None:
            key, value = self.int8_option
            if getattr(options, key, None) == value:
                return Status(
                    False,
                    f"the model is already quantized ({q.format} format); {key} = {value!r} "
                    f"(--int8) would quantize it a second time: build without --int8 and leave "
                    f"[targets.{self.name}] {key} at its default",
                )
        return Status(True)

    def requirements(self, options: dict[str, Any]) -> list[str]:
        """pip distributions runtime.py needs for these runner options (numpy and Pillow, which
        every bundle needs, come on top)."""
        return []

    def proxy(self, options: dict[str, Any]) -> Proxy | None:
        """The proxy used when availability().validate is not ok (its `runner` is a `kind` that
        runtime.py's open_runtime knows); None: no proxy."""
        return None

    def bench_variants(self, options: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """Extra benchmark configurations (label, runner option overrides)."""
        return []

    def cross_checks(self, options: dict[str, Any]) -> list[CrossCheck]:
        """Second runners whose decisions must agree with the validated runner's, for these
        runner options (e.g. another execution provider, or a model that takes image bytes)."""
        return []

    def cross_checked(  # noqa: B027 - optional hook
        self, ctx: BuildContext, stage: Path, probs: np.ndarray, results: list[CrossCheckResult]
    ) -> None:
        """Target-specific follow-up on the cross-checks that ran, given their outputs and the
        validated probabilities (a report file in the bundle, notes on a result); runs nothing."""

    def data_splits(self, options: Any) -> tuple[str, ...]:
        """Data splits the conversion reads besides the calibration and validation splits
        (BuildContext.dataset): their hashes go into the conversion's cache key."""
        return ()

    def conversion_host(self, options: Any) -> dict[str, Any]:
        """Facts of this host that a conversion's result depends on (a TensorRT engine is built
        for one GPU): they go into the conversion's cache key. Most conversions depend on none."""
        return {}

    def search_space(self, options: Any) -> list[Candidate]:
        """The candidates a precision search tries, in order (search_option names the field)."""
        return []

    def search_diagnose(
        self,
        ctx: BuildContext,
        label: str,
        details: dict[str, Any],
        others: dict[str, Any],
        x: np.ndarray,
    ) -> Diagnosis | None:
        """Why the failed INT8 candidate `label` lost its gate, given its BuildOutput.details,
        the other candidates' and `x` (images whose decision flipped); None: no diagnosis."""
        return None
