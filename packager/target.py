"""The Target interface: a target package reads top to bottom as options, availability,
conversion (its __init__.py) and the runtime that ships (its runtime.py, copied verbatim into
every bundle and loaded by the validation runner itself). Everything else (validation, benchmark,
gates, bundle) is shared code in packager/."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from packager.config import Config
from packager.data import Dataset
from packager.model import ModelInfo
from packager.preprocess import Preprocess
from packager.progress import Progress

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
    """One gate line: a measured value against a limit. A check that could not run says so
    (`ran=False`, status "not-run", with the reason) and never counts as passed."""

    name: str
    value: Any
    limit: Any
    passed: bool
    reason: str = ""
    ran: bool = True

    def __post_init__(self) -> None:
        if not self.ran:
            self.passed = False

    @property
    def status(self) -> str:
        return "not-run" if not self.ran else "passed" if self.passed else "failed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "passed": self.passed,
            "status": self.status,
            "reason": self.reason,
        }


@dataclass
class BuildContext:
    config: Config
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
    int8: bool = False  # --int8 on the command line


@dataclass
class BuildOutput:
    """What a target's conversion produced in the staging directory."""

    precision: str
    runner_options: dict[str, Any] = field(default_factory=dict)  # saved in runtime.json
    details: dict[str, Any] = field(default_factory=dict)  # target section of report.json
    notes: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)  # target-specific gates
    artifacts: list[str] = field(default_factory=list)  # the deployable model files (for size)


@dataclass
class Proxy:
    """A stand-in runtime when the target's own cannot run here (clearly labelled in reports)."""

    runner: str  # name passed to Target.runner(kind=...)
    label: str


class Target(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type]  # a dataclass; [targets.<name>] is validated against it
    int8_option: ClassVar[tuple[str, Any] | None] = None  # what --int8 sets, if supported
    shipped: ClassVar[tuple[str, ...]] = ()  # packager/shipped modules runtime.py imports
    is_reference: ClassVar[bool] = False  # the one every other target is compared with

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

    def checks(self, ctx: BuildContext, stage: Path, probs: np.ndarray) -> list[Check]:
        """Target-specific checks after validation (e.g. agreement of a second model)."""
        return []
