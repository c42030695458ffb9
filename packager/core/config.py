"""Typed config from packager.toml or [tool.packager] in pyproject.toml; flags override the file."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import tomllib
from pydantic import Field

from packager.core.errors import UserError
from packager.core.identifiers import refuse_identifier
from packager.core.schema import from_dict, hint, shown, typed

CONFIG_NAMES = ("packager.toml", "pyproject.toml")
DEFAULT_POSITIVE = "pneumonia"
# Golden-set sizes: each entry is an image stored in every bundle and replayed at every arrival.
GOLDEN_MAX = 1000


@typed
class CardConfig:
    """[model.card]: what the sign-off page and the SBOM's model card say the model is for."""

    intended_use: str = ""
    indications: list[str] = field(default_factory=list)
    contraindications: list[str] = field(default_factory=list)


@typed
class ModelConfig:
    path: str | None = None
    name: str = "model"
    version: str = "0.0.0"
    author: str = ""
    license: str = ""
    description: str = ""
    card: CardConfig = field(default_factory=CardConfig)

    def check(self, where: str) -> None:
        for key in ("name", "version"):
            value = getattr(self, key)
            # isprintable() is False for control characters and for Unicode format characters,
            # the bidi overrides (U+202E) among them: those spoof the bundle folder's name.
            if (
                not value
                or "/" in value
                or "\\" in value
                or value in (".", "..")
                or (not value.isprintable())
            ):
                raise UserError(
                    f"{where}.{key} = {value!r} must be a plain non-empty name (no slashes, "
                    "control or bidi characters)"
                )
            if len(value.encode()) > 100:
                raise UserError(f"{where}.{key} is longer than 100 bytes; shorten it")


@typed
class DicomConfig:
    # [center, width] in modality units: replaces each file's own VOI LUT / window. Shipped in
    # preprocess.json, so the hospital's predict.py windows the same way.
    window: list[float] | None = None

    def check(self, where: str) -> None:
        if self.window is not None and (len(self.window) != 2 or self.window[1] < 1):
            raise UserError(f"{where}.window = {self.window} must be [center, width], width >= 1")


@typed
class DataConfig:
    path: str | None = None
    split: str = "test"
    # A CSV path,label[,split][,metadata...] for an image folder (default: <path>/labels.csv).
    labels: str | None = None
    # Calibration (INT8) never uses the validation split.
    calibration_split: str = "train"
    calibration_size: int = 300
    seed: int = 0
    # Subgroups (site, sex, age band...): name = file with one label per validation image
    # (.npy, or text with one label per line); `{split}` in the path is replaced by the split.
    groups: dict[str, str] = field(default_factory=dict)
    # Subgroups from the dataset's own per-image metadata columns.
    group_by: list[str] = field(default_factory=list)
    # May images of this dataset leave the building (e.g. into a bundle's self-test)?
    shareable: bool = False
    dicom: DicomConfig = field(default_factory=DicomConfig)

    def check(self, where: str) -> None:
        if self.calibration_size < 1:
            raise UserError(f"{where}.calibration_size must be at least 1")
        if self.seed < 0:
            raise UserError(f"{where}.seed = {self.seed} must be 0 or more")
        for name in self.group_by:
            refuse_identifier(name, f"{where}.group_by names column")
        for name in self.groups:
            refuse_identifier(name, f"[{where}.groups] names group")


@typed
class PreprocessConfig:
    size: int | list[int] | None = None  # a side or [height, width]; None: the model's own
    channels: int | None = None  # None: the model's own channel count
    layout: Literal["NCHW", "NHWC"] | None = None  # None: guessed from the model input
    scale: float = 1.0 / 255.0
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.5])
    resize: Literal["bilinear", "nearest"] = "bilinear"
    # The bit depth of 16-bit PNG/TIFF data (12 for 12-bit values in 16-bit files): that range
    # maps onto 0..255 before `scale`; a value above it is refused, never clipped.
    uint16_bits: int = 16
    # The file formats the bundle reads, each replayed by its self-test (docs/selftest.md).
    # None: png, jpeg, tiff, bmp, plus dicom when the data holds DICOM or [data.dicom] sets a
    # window. dicom pins pydicom in the bundle's requirements.txt.
    formats: list[Literal["png", "jpeg", "tiff", "bmp", "dicom"]] | None = None

    def check(self, where: str) -> None:
        if not 9 <= self.uint16_bits <= 16:
            raise UserError(f"{where}.uint16_bits = {self.uint16_bits} must be between 9 and 16")
        sides = [self.size] if isinstance(self.size, int) else self.size or []
        if isinstance(self.size, list) and len(sides) != 2:
            raise UserError(f"{where}.size = {self.size}: give one side or [height, width]")
        if any(not 1 <= s <= 4096 for s in sides):
            raise UserError(f"{where}.size = {self.size}: each side must be between 1 and 4096")
        if self.channels is not None and self.channels not in (1, 3):
            raise UserError(f"{where}.channels = {self.channels} must be 1 or 3")
        if any(s == 0 for s in self.std):
            raise UserError(f"{where}.std must not contain 0")
        if len(self.mean) not in (1, 3) or len(self.std) not in (1, 3):
            raise UserError(f"{where}.mean and .std take 1 or 3 values (one per channel)")
        if self.formats is not None and not self.formats:
            raise UserError(f'{where}.formats is empty; list at least one, e.g. ["png"]')


@typed
class LabelsConfig:
    # binary / multiclass: one class per image (softmax outputs, `positive` against the rest);
    # multilabel: one independent 0/1 finding per output (sigmoid outputs, each with its own
    # threshold). None: multilabel when the data holds one 0/1 column per name, else binary for
    # two names and multiclass for more (docs/multilabel.md).
    task: Literal["binary", "multiclass", "multilabel"] | None = None
    names: list[str] = field(default_factory=lambda: ["normal", "pneumonia"])
    positive: str = DEFAULT_POSITIVE
    threshold: float = 0.5
    # multilabel: a finding's own threshold; the others use `threshold`
    thresholds: dict[str, float] = field(default_factory=dict)
    # auto: probabilities when the graph ends in Softmax/Sigmoid, else logits (a softmax over
    # the classes, or for multilabel a sigmoid per finding).
    output: Literal["auto", "logits", "probabilities"] = "auto"
    # Why this operating point: printed beside the threshold on the sign-off page.
    threshold_rationale: str = ""

    def check(self, where: str) -> None:
        least = 1 if self.multilabel else 2
        if len(self.names) < least or len(set(self.names)) != len(self.names):
            what = "finding" if self.multilabel else "class"
            raise UserError(f"{where}.names must list at least {least} distinct {what} names")
        if self.task == "binary" and len(self.names) != 2:
            raise UserError(f'{where}: task = "binary" takes two names, got {len(self.names)}')
        # The default positive is checked once the data says whether the model is multi-label
        # (builder.session.resolve_task); a task or a positive the user set, at once.
        if self.task is not None or self.positive != DEFAULT_POSITIVE:
            self.check_positive(where)
        if self.thresholds and self.task in ("binary", "multiclass"):
            raise UserError(
                f'[{where}.thresholds] needs task = "multilabel"; a single-label model has one '
                f"threshold, {where}.threshold"
            )
        for name, value in {"": self.threshold, **self.thresholds}.items():
            key = f"{where}.thresholds.{shown(name)}" if name else f"{where}.threshold"
            if name and name not in self.names:
                raise UserError(f"{key} names no finding; use one of {where}.names {self.names}")
            if not 0.0 < value < 1.0:
                raise UserError(f"{key} = {value} must be between 0 and 1")

    def check_positive(self, where: str = "labels") -> None:
        if not self.multilabel and self.positive not in self.names:
            raise UserError(
                f"{where}.positive = {self.positive!r} is not in {where}.names {self.names}"
                + ('; for a multi-label model set task = "multilabel"' if not self.task else "")
            )

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    @property
    def positive_index(self) -> int:
        return self.names.index(self.positive)

    def operating_points(self) -> tuple[Any, Any]:
        """What a decision reads (core.metrics.decisions): the positive class's index and the
        threshold, or for multilabel every finding's index and threshold as lists."""
        if self.multilabel:
            return list(range(len(self.names))), [self.threshold_of(n) for n in self.names]
        return self.positive_index, self.threshold

    def threshold_of(self, name: str) -> float:
        """A finding's threshold: its own in [labels.thresholds], else `threshold`."""
        return self.thresholds.get(name, self.threshold)


@typed
class ClassGates:
    """[gates.classes.<name>]: one class of [labels] names against the rest, on the predicted
    class (the positive class where p(positive) >= threshold, else the most probable other)."""

    min_sensitivity: float | None = None
    min_specificity: float | None = None

    def check(self, where: str) -> None:
        for key in ("min_sensitivity", "min_specificity"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= 1.0:
                raise UserError(f"{where}.{key} is a fraction between 0 and 1 (0.9, not 90)")


@typed
class GatesConfig:
    min_sensitivity: float = 0.98
    max_sensitivity_drop: float = 0.005
    # Subgroup gates (off unless set), applied to subgroups with at least
    # min_subgroup_positives positives; smaller ones are reported "too small to judge".
    min_subgroup_sensitivity: float | None = None
    max_subgroup_sensitivity_drop: float | None = None
    min_subgroup_positives: int = 20
    # multilabel: a finding with fewer positive validation images is `insufficient evidence`
    # (fails closed), as a subgroup with too few is never judged passed
    min_finding_positives: int = 20
    # Every other clinical metric (packager/core/gates.py), off unless set. PPV and NPV depend on the
    # prevalence where the model is used, so they need it declared.
    min_specificity: float | None = None
    max_specificity_drop: float | None = None
    min_auc: float | None = None
    max_auc_drop: float | None = None
    min_ppv: float | None = None
    min_npv: float | None = None
    prevalence: float | None = None
    max_flip_rate: float | None = None
    max_ece_increase: float | None = None
    paired_alpha: float | None = None  # exact McNemar: the target significantly worse fails
    # [gates.custom] name = {min = ..} / {max = ..}: a metric from a `packager.metrics` entry point
    custom: dict[str, dict[str, float]] = field(default_factory=dict)
    # [gates.classes.<name>] min_sensitivity / min_specificity, one class against the rest
    classes: dict[str, ClassGates] = field(default_factory=dict)
    # multilabel: [gates.findings.<name>] any gate above for one finding, over [gates]
    findings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # What each gate decides on: "point" (the estimate) or "ci" (the bound of its 95% interval on
    # the gate's side). Unset: "point" at build, "ci" at site acceptance (packager/core/gates.py).
    decide_on: Literal["point", "ci"] | None = None

    def check(self, where: str) -> None:
        for key in FRACTION_GATES:
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= 1.0:
                raise UserError(f"{where}.{key} is a fraction between 0 and 1 (0.98, not 98)")
        for key in ("min_subgroup_positives", "min_finding_positives"):
            if getattr(self, key) < 1:
                raise UserError(f"{where}.{key} must be at least 1")
        if (self.min_ppv is not None or self.min_npv is not None) and self.prevalence is None:
            raise UserError(
                f"{where}: min_ppv and min_npv depend on the prevalence; declare "
                "prevalence = <fraction of positives where the model is used>"
            )
        if self.prevalence is not None and not 0.0 < self.prevalence < 1.0:
            raise UserError(f"{where}.prevalence must lie strictly between 0 and 1")
        if self.paired_alpha is not None and not 0.0 < self.paired_alpha < 1.0:
            raise UserError(f"{where}.paired_alpha must lie strictly between 0 and 1 (e.g. 0.01)")
        for name, bounds in self.custom.items():
            if not bounds or set(bounds) - {"min", "max"}:
                raise UserError(
                    f"{where}.custom.{shown(name)} takes min and/or max, e.g. {{min = 0.9}}"
                )
        for name in self.findings:
            self.for_finding(name, f"{where}.findings.{shown(name)}")

    def for_finding(self, name: str, where: str = "") -> GatesConfig:
        """The gates of one finding: [gates] with [gates.findings.<name>] over it (the model-wide
        tables, custom and classes, stay with the model)."""
        over = self.findings.get(name, {})
        for key in FINDING_FIXED:
            if key in over:
                raise UserError(f"{where or name}: {key} applies to the whole model, not a finding")
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return from_dict(GatesConfig, base | dict(over) | {"findings": {}}, where or name)


# [gates.findings.<name>] cannot set these: they apply to the model, not to one finding.
FINDING_FIXED = ("custom", "classes", "findings")


FRACTION_GATES = (
    "min_sensitivity",
    "max_sensitivity_drop",
    "min_subgroup_sensitivity",
    "max_subgroup_sensitivity_drop",
    "min_specificity",
    "max_specificity_drop",
    "min_auc",
    "max_auc_drop",
    "min_ppv",
    "min_npv",
    "max_flip_rate",
    "max_ece_increase",
)


@typed
class OpenLoopConfig:
    """[bench.open_loop]: latency under Poisson arrivals (packager/runtime/openloop.py)."""

    enabled: bool = False
    sla_ms: float = 3.0  # max_rate is the highest rate whose p95 meets this
    max_batch: int = 16  # the dynamic batcher's largest batch
    # how long the batcher waits after the oldest request for more: 0 as Triton's default
    # (max_queue_delay_microseconds), it takes what has arrived when the runtime is free
    max_delay_ms: float = 0.0
    seconds: float = 1.0  # per offered rate

    def check(self, where: str) -> None:
        if self.sla_ms <= 0 or self.seconds <= 0 or self.max_delay_ms < 0:
            raise UserError(f"{where}: sla_ms > 0, seconds > 0, max_delay_ms >= 0")
        if not 1 <= self.max_batch <= 4096:
            raise UserError(f"{where}.max_batch must be 1..4096")


@typed
class BenchConfig:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 16, 32, 64])
    warmup: int = 10
    # Each batch size runs for this long (and at least min_iterations times).
    seconds: float = 2.0
    min_iterations: int = 20
    timeout_s: float = 600.0
    # Windows of seconds/3 repeat until 3 in a row agree within ±stability (throughput and
    # median latency), or max_seconds (default 4 x seconds) per batch size and mode is spent.
    stability: float = 0.10
    max_seconds: float | None = None
    open_loop: OpenLoopConfig = field(default_factory=OpenLoopConfig)
    # Through the build cache, a benchmark of the same bundle files, [bench], images and kind of
    # host is reused: "quiet" only one measured on a quiet host with every window settled,
    # "always" any (its busy-host marks kept), "never" none.
    reuse: Literal["quiet", "always", "never"] = "quiet"

    def check(self, where: str) -> None:
        if not self.batch_sizes or any(b < 1 or b > 4096 for b in self.batch_sizes):
            raise UserError(f"{where}.batch_sizes must be a non-empty list of sizes 1..4096")
        if self.seconds <= 0 or self.min_iterations < 1 or self.warmup < 0 or self.timeout_s <= 0:
            raise UserError(
                f"{where}: seconds > 0, min_iterations >= 1, warmup >= 0, timeout_s > 0"
            )
        if not 0.0 < self.stability < 1.0:
            raise UserError(f"{where}.stability is a fraction between 0 and 1 (0.10 = ±10%)")
        if self.max_seconds is not None and self.max_seconds < self.seconds:
            raise UserError(f"{where}.max_seconds must be at least seconds ({self.seconds})")


@typed
class OutputConfig:
    dir: str = "dist"


@typed
class SelftestConfig:
    # Sizes of the golden set shipped in every bundle (ranges checked by pydantic, see schema).
    synthetic: Annotated[int, Field(ge=1, le=GOLDEN_MAX)] = 16  # seeded synthetic inputs
    # Synthetic blends placed just either side of the threshold.
    # multi-label: shared among the findings, at least 2 each (one either side of its threshold)
    near_threshold: Annotated[int, Field(ge=0, le=GOLDEN_MAX)] = 4
    # Validation images nearest the threshold; needs [data] shareable = true.
    samples: Annotated[int, Field(ge=0, le=GOLDEN_MAX)] = 0


@typed
class SignConfig:
    # EC private key (PEM, `packager keygen`) that signs every bundle before it is published;
    # relative to this file. Never recorded in a bundle (the manifest leaves [sign] out).
    key: str | None = None


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "preprocess": PreprocessConfig,
    "labels": LabelsConfig,
    "gates": GatesConfig,
    "bench": BenchConfig,
    "output": OutputConfig,
    "selftest": SelftestConfig,
    "sign": SignConfig,
}


@typed
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    gates: GatesConfig = field(default_factory=GatesConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    selftest: SelftestConfig = field(default_factory=SelftestConfig)
    sign: SignConfig = field(default_factory=SignConfig)
    # Raw per-target tables; each target validates its own with its Options schema.
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        out["targets"] = self.targets
        return out


def find_config(cwd: Path) -> Path | None:
    for name in CONFIG_NAMES:
        path = cwd / name
        if path.is_file() and (name != "pyproject.toml" or _has_tool_section(path)):
            return path
    return None


def _has_tool_section(path: Path) -> bool:
    try:
        return "packager" in tomllib.loads(path.read_text()).get("tool", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError):
        return False


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist; check --config") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise UserError(
            f"{path} nests arrays or tables too deeply to be a config; flatten it"
        ) from None
    if path.name == "pyproject.toml":
        data = data.get("tool", {}).get("packager", {})
    return data


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def parse_config(data: dict[str, Any], base: Path, source: Path | None = None) -> Config:
    """Validate a config dict; relative paths resolve against `base` (the file's folder)."""
    known = [*SECTIONS, "targets"]
    for key in data:
        if key not in known:
            raise UserError(f"unknown section [{shown(key)}] in config{hint(key, known)}")
    sections: dict[str, Any] = {
        name: from_dict(cls, data.get(name), name) for name, cls in SECTIONS.items()
    }
    targets = data.get("targets", {})
    if not isinstance(targets, dict) or not all(isinstance(v, dict) for v in targets.values()):
        raise UserError(
            "[targets] must hold one table per target, e.g. [targets.<name>] (see `packager targets`)"
        )
    cfg = Config(**sections, targets=targets, source=source)
    for name in cfg.gates.classes:
        if name not in cfg.labels.names:
            raise UserError(
                f"[gates.classes.{shown(name)}] names no class; use one of [labels] names "
                f"{cfg.labels.names}"
            )
    if cfg.gates.classes and cfg.labels.multilabel:
        raise UserError(
            "[gates.classes] is for one class per image; a multilabel model takes "
            "[gates.findings.<name>]"
        )
    for name in cfg.gates.findings:
        if name not in cfg.labels.names:
            raise UserError(
                f"[gates.findings.{shown(name)}] names no finding; use one of [labels] names "
                f"{cfg.labels.names}"
            )
    if cfg.gates.findings and cfg.labels.task in ("binary", "multiclass"):
        raise UserError('[gates.findings] needs [labels] task = "multilabel"')
    cfg.model.path = _resolve(base, cfg.model.path)
    cfg.data.path = _resolve(base, cfg.data.path)
    cfg.data.groups = {k: str(_resolve(base, v)) for k, v in cfg.data.groups.items()}
    cfg.data.labels = _resolve(base, cfg.data.labels)
    cfg.output.dir = str(_resolve(base, cfg.output.dir))
    cfg.sign.key = _resolve(base, cfg.sign.key)
    return cfg


def load_config(path: Path | None, cwd: Path | None = None) -> Config:
    """Read `path`, or packager.toml / [tool.packager] from `cwd`, or defaults."""
    cwd = cwd or Path.cwd()
    path = path or find_config(cwd)
    if path is None:
        return parse_config({}, cwd)
    path = path.resolve()
    return parse_config(_read_toml(path), path.parent, source=path)


def override(cfg: Config, section: str, key: str, value: Any) -> None:
    """Apply a command-line flag (already typed by click) on top of the file's value."""
    if value is not None:
        setattr(getattr(cfg, section), key, value)
