"""Typed config from packager.toml or [tool.packager] in pyproject.toml; flags override the file."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

import tomllib

from packager.errors import UserError
from packager.schema import from_dict, hint, shown, typed

CONFIG_NAMES = ("packager.toml", "pyproject.toml")


@typed
class ModelConfig:
    path: str | None = None
    name: str = "model"
    version: str = "0.0.0"
    author: str = ""
    license: str = ""
    description: str = ""

    def check(self, where: str) -> None:
        for key in ("name", "version"):
            value = getattr(self, key)
            control = any(ord(c) < 32 or ord(c) == 127 for c in value)
            if not value or "/" in value or "\\" in value or value in (".", "..") or control:
                raise UserError(f"{where}.{key} = {value!r} must be a plain non-empty name")
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


@typed
class PreprocessConfig:
    size: int | None = None  # None: the model's own spatial size
    channels: int | None = None  # None: the model's own channel count
    layout: Literal["NCHW", "NHWC"] | None = None  # None: guessed from the model input
    scale: float = 1.0 / 255.0
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.5])
    resize: Literal["bilinear", "nearest"] = "bilinear"
    # The bit depth of 16-bit PNG/TIFF data (12 for 12-bit values in 16-bit files): that range
    # maps onto 0..255 before `scale`; a value above it is refused, never clipped.
    uint16_bits: int = 16

    def check(self, where: str) -> None:
        if not 9 <= self.uint16_bits <= 16:
            raise UserError(f"{where}.uint16_bits = {self.uint16_bits} must be between 9 and 16")
        if self.size is not None and not 1 <= self.size <= 4096:
            raise UserError(f"{where}.size = {self.size} must be between 1 and 4096")
        if self.channels is not None and self.channels not in (1, 3):
            raise UserError(f"{where}.channels = {self.channels} must be 1 or 3")
        if any(s == 0 for s in self.std):
            raise UserError(f"{where}.std must not contain 0")
        if len(self.mean) not in (1, 3) or len(self.std) not in (1, 3):
            raise UserError(f"{where}.mean and .std take 1 or 3 values (one per channel)")


@typed
class LabelsConfig:
    names: list[str] = field(default_factory=lambda: ["normal", "pneumonia"])
    positive: str = "pneumonia"
    threshold: float = 0.5
    # auto: probabilities when the graph ends in Softmax/Sigmoid, else logits.
    output: Literal["auto", "logits", "probabilities"] = "auto"

    def check(self, where: str) -> None:
        if len(self.names) < 2 or len(set(self.names)) != len(self.names):
            raise UserError(f"{where}.names must list at least two distinct class names")
        if self.positive not in self.names:
            raise UserError(
                f"{where}.positive = {self.positive!r} is not in {where}.names {self.names}"
            )
        if not 0.0 < self.threshold < 1.0:
            raise UserError(f"{where}.threshold = {self.threshold} must be between 0 and 1")

    @property
    def positive_index(self) -> int:
        return self.names.index(self.positive)


@typed
class GatesConfig:
    min_sensitivity: float = 0.98
    max_sensitivity_drop: float = 0.005
    # Subgroup gates (off unless set), applied to subgroups with at least
    # min_subgroup_positives positives; smaller ones are reported "too small to judge".
    min_subgroup_sensitivity: float | None = None
    max_subgroup_sensitivity_drop: float | None = None
    min_subgroup_positives: int = 20

    def check(self, where: str) -> None:
        for key in (
            "min_sensitivity",
            "max_sensitivity_drop",
            "min_subgroup_sensitivity",
            "max_subgroup_sensitivity_drop",
        ):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= 1.0:
                raise UserError(f"{where}.{key} is a fraction between 0 and 1 (0.98, not 98)")
        if self.min_subgroup_positives < 1:
            raise UserError(f"{where}.min_subgroup_positives must be at least 1")


@typed
class BenchConfig:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 16, 32, 64])
    warmup: int = 10
    # Each batch size runs for this long (and at least min_iterations times).
    seconds: float = 2.0
    min_iterations: int = 20
    timeout_s: float = 600.0

    def check(self, where: str) -> None:
        if not self.batch_sizes or any(b < 1 or b > 4096 for b in self.batch_sizes):
            raise UserError(f"{where}.batch_sizes must be a non-empty list of sizes 1..4096")
        if self.seconds <= 0 or self.min_iterations < 1 or self.warmup < 0 or self.timeout_s <= 0:
            raise UserError(
                f"{where}: seconds > 0, min_iterations >= 1, warmup >= 0, timeout_s > 0"
            )


@typed
class OutputConfig:
    dir: str = "dist"


@typed
class SelftestConfig:
    synthetic: int = 16  # seeded synthetic inputs in the golden set
    near_threshold: int = 4  # synthetic blends placed just either side of the threshold
    samples: int = 0  # validation images nearest the threshold; needs [data] shareable = true

    def check(self, where: str) -> None:
        if self.synthetic < 1 or self.near_threshold < 0 or self.samples < 0:
            raise UserError(f"{where} needs synthetic >= 1, near_threshold >= 0 and samples >= 0")


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
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist; check --config") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid TOML: {exc}") from None
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
