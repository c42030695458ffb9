"""What every target of one build shares: the checked model, its preprocessing, the data and
the reference predictions (computed once, cached by the content of model and data)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from packager.builder.bundle import install_code
from packager.core.config import Config
from packager.core.data import (
    Dataset,
    FileList,
    holds_dicom,
    load_dataset,
    open_dataset,
    read_files,
)
from packager.core.errors import UserError
from packager.core.metrics import to_probabilities
from packager.core.model import ModelInfo, inspect_model
from packager.core.progress import Progress
from packager.core.registry import reference
from packager.core.target import BuildContext
from packager.runtime.runner import predict
from packager.runtime.validate import output_kind
from packager.shipped.preprocess import FORMATS, PILLOW_FORMATS, Preprocess


def _hw_text(hw: list[int | None]) -> str:
    return "x".join("?" if d is None else str(d) for d in hw)


def resolve_preprocess(cfg: Config, info: ModelInfo) -> Preprocess:
    p = cfg.preprocess
    layout = p.layout or info.layout
    if layout is None:
        raise UserError(
            f"cannot tell the layout of input {info.input.shape}; set [preprocess] layout = "
            '"NCHW" or "NHWC"'
        )
    shape = info.input.shape
    chan = shape[1] if layout == "NCHW" else shape[3]
    hw = shape[2:4] if layout == "NCHW" else shape[1:3]
    if isinstance(chan, int) and p.channels is not None and chan != p.channels:
        raise UserError(f"the model takes {chan} channels but [preprocess] channels = {p.channels}")
    channels = p.channels or (chan if isinstance(chan, int) else None)
    if channels not in (1, 3):
        raise UserError(
            f"input {shape} has no 1- or 3-channel axis for {layout}; set [preprocess] channels"
        )
    wanted = (p.size, p.size) if isinstance(p.size, int) else tuple(p.size or (None, None))
    model = [d if isinstance(d, int) else None for d in hw]
    if any(m is not None and w is not None and m != w for m, w in zip(model, wanted, strict=True)):
        raise UserError(
            f"the model expects {_hw_text(model)} images but [preprocess] size = {p.size}; "
            "make them match"
        )
    h, w = (m if m is not None else s for m, s in zip(model, wanted, strict=True))
    if h is None or w is None:
        raise UserError(f"input {shape} has a dynamic image size; set [preprocess] size")
    size = h if h == w else (h, w)
    for key in ("mean", "std"):
        if len(getattr(p, key)) not in (1, channels):
            raise UserError(
                f"[preprocess] {key} has {len(getattr(p, key))} values for {channels} channels"
            )
    return Preprocess(
        size=size,
        channels=channels,
        layout=layout,
        scale=p.scale,
        mean=tuple(p.mean),
        std=tuple(p.std),
        dtype=info.input.dtype,
        resize=p.resize,
        uint16_bits=p.uint16_bits,
        dicom_window=tuple(cfg.data.dicom.window) if cfg.data.dicom.window else None,  # type: ignore[arg-type]
    )


def resolve_formats(cfg: Config, data_holds_dicom: bool) -> tuple[str, ...]:
    """The file formats the bundle reads (config.PreprocessConfig.formats), in FORMATS order."""
    listed = cfg.preprocess.formats
    if listed is None:
        dicom = data_holds_dicom or cfg.data.dicom.window is not None
        return (*PILLOW_FORMATS, *(("dicom",) if dicom else ()))
    if data_holds_dicom and "dicom" not in listed:
        raise UserError(
            'the validation data holds DICOM files but [preprocess] formats does not list "dicom"; '
            "add it (the bundle reads what it was validated on)"
        )
    return tuple(f for f in FORMATS if f in listed)


def infer_from(info: ModelInfo) -> str | None:
    """Whether the data may say the model is multi-label ("infer"): only for a model ending in
    a Sigmoid with several outputs. Any other model with one 0/1 column per name is refused by
    the loader: one-hot labels of a softmax model look the same, and packager does not guess."""
    return "infer" if info.activation == "Sigmoid" and (info.num_classes or 0) > 1 else None


def resolve_task(cfg: Config, multilabel_data: bool) -> None:
    """[labels] task from the data when the config leaves it out (see `infer_from`).
    Per-finding settings on single-label data are refused."""
    labels = cfg.labels
    if labels.task is None and multilabel_data:
        labels.task = "multilabel"
    if labels.multilabel and cfg.gates.classes:
        raise UserError(
            "[gates.classes] is for one class per image; a multi-label model takes "
            "[gates.findings.<name>]"
        )
    labels.check_positive()
    if not labels.multilabel and (labels.thresholds or cfg.gates.findings):
        raise UserError(
            "[labels.thresholds] and [gates.findings] are per finding of a multi-label model, "
            "but the data has one class per image; give one 0/1 column per [labels] names"
        )


@dataclass
class Session:
    cfg: Config
    model_path: Path
    info: ModelInfo
    preprocess: Preprocess
    validation: Dataset
    progress: Progress
    cache_dir: Path

    @classmethod
    def open(cls, cfg: Config, progress: Progress) -> Session:
        if not cfg.model.path:
            raise UserError(
                "no model given; pass --model PATH or set [model] path in packager.toml"
            )
        model_path = Path(cfg.model.path)
        with progress.step("intake", f"checking {model_path.name}"):
            info = inspect_model(model_path)
        if info.num_classes is not None and info.num_classes != len(cfg.labels.names):
            raise UserError(
                f"the model has {info.num_classes} outputs but [labels] names lists "
                f"{len(cfg.labels.names)} classes; list one name per output"
            )
        pre = resolve_preprocess(cfg, info)
        with progress.step("data", f"loading split '{cfg.data.split}'"):
            source = open_dataset(
                cfg.data.path,
                cfg.data.split,
                cfg.labels.names,
                cfg.data.labels,
                cfg.data.group_by,
                task=cfg.labels.task or (infer_from(info)),
            )
            resolve_task(cfg, source.labels.ndim == 2)
            dicom = isinstance(source, FileList) and holds_dicom(source)
            pre = replace(pre, formats=resolve_formats(cfg, dicom))
            val = source if isinstance(source, Dataset) else read_files(source, pre)
        return cls(cfg, model_path, info, pre, val, progress, Path(cfg.output.dir) / ".cache")

    @property
    def output_kind(self) -> str:
        return output_kind(self.cfg, self.info.ends_with_softmax)

    @cached_property
    def x(self) -> np.ndarray:
        return self.preprocess(self.validation.images)

    @cached_property
    def reference(self) -> np.ndarray:
        """The reference target's probabilities on the validation split."""
        return to_probabilities(self.reference_scores(), self.output_kind)

    def context(
        self, options: Any, calibration: Callable[[], np.ndarray] | None = None
    ) -> BuildContext:
        """What a target's conversion gets to see (`calibration`: a cached loader shared by the
        candidates of a precision search)."""
        cfg = self.cfg
        return BuildContext(
            model_config=cfg.model,
            labels=cfg.labels,
            data=cfg.data,
            gates=cfg.gates,
            timeout_s=cfg.bench.timeout_s,
            options=options,
            model_path=self.model_path,
            model=self.info,
            preprocess=self.preprocess,
            validation=self.validation,
            x=self.x,
            output_kind=self.output_kind,
            reference=self.reference,
            dataset=self.dataset,
            calibration=calibration or self.calibration,
            progress=self.progress,
        )

    def calibration(self) -> np.ndarray:
        d = self.cfg.data
        if d.calibration_split == d.split:
            raise UserError(
                f"[data] calibration_split = '{d.split}' is the validation split; calibrating on "
                "the images you validate on hides errors — choose another split"
            )
        cal = self.dataset(d.calibration_split)
        return self.preprocess(cal.subset(d.calibration_size, d.seed).images)

    def dataset(self, split: str) -> Dataset:
        """Another split of the configured data, read as the validation split was."""
        d = self.cfg.data
        return load_dataset(
            d.path,
            split,
            self.cfg.labels.names,
            self.preprocess,
            d.labels,
            d.group_by,
            self.cfg.labels.task,
        )

    def reference_scores(self) -> np.ndarray:
        """Scores of the source model on ONNX Runtime CPU FP32, cached by content hash."""
        key = hashlib.sha256(
            json.dumps(
                [
                    self.info.sha256,
                    self.validation.sha256,
                    self.validation.split,
                    self.preprocess.to_json(),
                ]
            ).encode()
        ).hexdigest()[:24]
        path = self.cache_dir / f"reference-{key}.npy"
        if path.exists():
            return np.load(path, allow_pickle=False)

        ref = reference()
        with (
            self.progress.step(ref.name, "reference predictions"),
            tempfile.TemporaryDirectory(prefix="packager-reference-") as code,
        ):
            install_code(ref, Path(code))  # the reference bundle's own runtime.py
            scores, _ = predict(
                ref.name,
                self.model_path.parent,
                ref.source_options(self.model_path),
                self.x,
                self.info.fixed_batch,
                self.cfg.bench.timeout_s,
                code=Path(code),
            )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.part.npy")  # one per concurrent build
        try:
            np.save(tmp, scores, allow_pickle=False)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return scores
