"""The multi-label example's packager.toml: its preprocessing, and the filled-in copy train.py
writes next to the model, checked by hand until packager's parser takes `task = "multilabel"`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tomllib

from packager.core.config import Config, load_config
from packager.core.errors import UserError
from packager.example.train import set_value
from packager.shipped.preprocess import Preprocess

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "packager.toml"
MIN_VAL_SENSITIVITY = 0.95  # each finding's threshold keeps at least this on val


def template() -> dict[str, Any]:
    return tomllib.loads(TEMPLATE.read_text())


def finding_names() -> list[str]:
    return list(template()["labels"]["names"])


def preprocess() -> Preprocess:
    """The Preprocess packager builds from the template's [preprocess] for an FP32 model (the
    same code every bundle ships), so training sees exactly what the bundles will."""
    p = template()["preprocess"]
    return Preprocess(
        size=p["size"],
        channels=p["channels"],
        layout=p["layout"],
        scale=p["scale"],
        mean=tuple(p["mean"]),
        std=tuple(p["std"]),
        dtype="float32",
        resize=p["resize"],
    )


def rationale(thresholds: dict[str, dict[str, Any]]) -> str:
    """The selection rule and each finding's numbers, for the sign-off page."""
    each = "; ".join(
        f"{name} {t['value']:.6g} (at most {t['allowed_misses']} of {t['val_positives']} val "
        f"positives missed, val sensitivity {t['val_sensitivity']:.4f})"
        for name, t in thresholds.items()
    )
    return (
        f"per finding, chosen on the val split, never the gate split: the highest threshold "
        f"missing at most floor({1 - MIN_VAL_SENSITIVITY:.0%} of val positives), so val "
        f"sensitivity >= {MIN_VAL_SENSITIVITY:.0%}, placed midway to the next lower val score; "
        f"{each}"
    )


def write_config(out: Path, thresholds: dict[str, dict[str, Any]]) -> Path:
    """out/packager.toml: the template with each finding's threshold and the rationale filled
    in. The model and data paths stay relative (model.onnx, multilabel.npz beside the file),
    so the folder can be copied or cached whole."""
    text = TEMPLATE.read_text()
    for name, t in thresholds.items():
        text = set_value(text, "labels.thresholds", name, repr(t["value"]))
    text = set_value(text, "labels", "threshold_rationale", json.dumps(rationale(thresholds)))
    path = out / "packager.toml"
    path.write_text(text)
    check_config(path)
    return path


def check_config(path: Path) -> Config:
    """What packager will read, read by packager itself (a UserError names the first problem),
    with a threshold for every finding and the model and data files present."""
    cfg = load_config(path)
    missing = [n for n in cfg.labels.names if n not in cfg.labels.thresholds]
    if missing:
        raise UserError(f"{path}: [labels.thresholds] has no threshold for {missing}")
    for key, file in (("model", cfg.model.path), ("data", cfg.data.path)):
        if file is None or not Path(file).is_file():
            raise UserError(f"{path}: [{key}] path {file} does not exist")
    return cfg
