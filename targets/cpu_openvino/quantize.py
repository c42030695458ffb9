"""cpu-openvino's INT8: NNCF post-training quantization, or accuracy control on sensitivity (the
quantizer keeps in float whatever layers it must), and the IR's weighted layers by precision."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from packager.core.metrics import clinical, decisions, to_probabilities
from packager.core.target import BuildContext, Check

WEIGHTED_OPS = {
    "Convolution",
    "GroupConvolution",
    "ConvolutionBackpropData",
    "GroupConvolutionBackpropData",
    "MatMul",
}
INT_WEIGHTS = {"i8", "u8", "i4", "u4"}
# Ops NNCF may put between a weight constant and the layer that reads it.
WEIGHT_PATH_OPS = {
    "Convert",
    "Multiply",
    "Subtract",
    "Reshape",
    "Transpose",
    "Unsqueeze",
    "Squeeze",
}


@contextmanager
def _nncf_output(verbose: bool) -> Iterator[None]:
    """NNCF logs at INFO only when progress is shown (the build keeps its stdout off --json)."""
    import nncf

    level = logging.getLogger("nncf").level
    nncf.set_log_level(logging.INFO if verbose else logging.ERROR)
    try:
        yield
    finally:
        nncf.set_log_level(level)


def _chunks(a: np.ndarray, size: int, fill: Any = None) -> list[np.ndarray]:
    """`a` cut into items of the model's batch size; the last is padded (with `fill`, or by
    repeating its last row)."""
    out = []
    for i in range(0, len(a), size):
        c = a[i : i + size]
        if len(c) < size:
            n = size - len(c)
            pad = (
                np.repeat(c[-1:], n, axis=0)
                if fill is None
                else np.full((n, *c.shape[1:]), fill, c.dtype)
            )
            c = np.concatenate([c, pad])
        out.append(np.ascontiguousarray(c))
    return out


class SensitivityMetric:
    """NNCF validation function: sensitivity at the configured threshold (higher is better).

    Per-item outputs are returned too, so NNCF ranks layers by how much each one changes the
    scores (its NMSE mode): a per-image sensitivity is 0 or 1 and ranks nothing."""

    def __init__(self, positive: Any, threshold: Any, kind: str) -> None:
        self.positive, self.threshold, self.kind = positive, threshold, kind
        # multilabel: each finding's FP32 sensitivity and max_drop / its own drop limit; the
        # metric is then 1 + the worst finding's scaled change (1 for the FP32 model: NNCF
        # divides by it), so NNCF's absolute max_drop bounds every finding's drop by its limit
        self.baseline: np.ndarray | None = None
        self.scale: np.ndarray | float = 1.0

    def __call__(
        self, compiled: Any, items: Iterable[tuple[np.ndarray, np.ndarray]]
    ) -> tuple[float, list[list[np.ndarray]]]:
        outs, labels = [], []
        for x, y in items:
            outs.append(np.array(compiled(x)[0], np.float32))
            labels.append(y)
        return self.sensitivity(np.concatenate(outs), np.concatenate(labels)), [[o] for o in outs]

    def sensitivity(self, scores: np.ndarray, labels: np.ndarray) -> float:
        probs = to_probabilities(scores, self.kind)
        if not isinstance(self.positive, list):
            return clinical(probs, labels, self.positive, self.threshold).sensitivity
        each = self.per_finding(probs, labels)
        if self.baseline is None:
            return float(each.min())
        return float(1 + ((each - self.baseline) * self.scale).min())

    def per_finding(self, probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Each finding's sensitivity (0 where it has no positives)."""
        y = labels == 1
        hits = (decisions(probs, self.positive, self.threshold) & y).sum(axis=0)
        return hits / np.maximum(y.sum(axis=0), 1)


def _findings_sensitivity(
    metric: SensitivityMetric, model: Any, xs: list[np.ndarray], labels: np.ndarray
) -> np.ndarray:
    """Each finding's sensitivity of `model` on the control images."""
    compiled = _compile_f32(model)
    outs = np.concatenate([np.array(compiled(x)[0], np.float32) for x in xs])
    return metric.per_finding(to_probabilities(outs, metric.kind)[: len(labels)], labels)


def _weight_kind(op: Any) -> str | None:
    """'int8' when a weighted layer reads quantized weights, 'float' when it reads float
    constants, None when its second input is not a weight."""
    node = op.input_value(1).get_node()
    while True:
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return "int8"
        if kind == "Constant":
            return "int8" if node.get_element_type().get_type_name() in INT_WEIGHTS else "float"
        if kind not in WEIGHT_PATH_OPS:
            return None
        node = node.input_value(0).get_node()


def layer_precisions(model: Any) -> dict[str, list[str]]:
    """Weighted layers (convolutions, matmuls) of an IR split by the precision of their weights."""
    out: dict[str, list[str]] = {"int8": [], "float": []}
    for op in model.get_ordered_ops():
        if op.get_type_name() in WEIGHTED_OPS:
            kind = _weight_kind(op)
            if kind:
                out[kind].append(op.get_friendly_name())
    return out


# The fully quantized model accuracy control starts from is exactly what PTQ produces with the
# same calibration and preset: a search reuses it instead of calibrating twice.
_PTQ_SEEN: dict[tuple[Any, ...], Any] = {}


def _ptq_key(ctx: BuildContext) -> tuple[Any, ...]:
    o = ctx.options
    return (str(ctx.model_path), ctx.calibration, o.preset, tuple(o.keep_float))


def _compile_f32(model: Any) -> Any:
    import openvino as ov

    return ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def quantize(ctx: BuildContext, model: Any) -> tuple[Any, dict[str, Any], list[Check]]:
    """INT8 with NNCF: calibration from a non-validation split; with accuracy control, the
    allowed sensitivity drop on the control split is [gates] max_sensitivity_drop."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    opts = ctx.options
    batch = ctx.model.fixed_batch or 1
    cal_images = ctx.calibration()
    calibration = _chunks(cal_images, batch)
    common: dict[str, Any] = {
        "subset_size": len(calibration),
        "preset": nncf.QuantizationPreset(opts.preset),
        "target_device": nncf.TargetDevice.CPU,
    }
    if opts.keep_float:
        common["ignored_scope"] = nncf.IgnoredScope(names=list(opts.keep_float))
    details: dict[str, Any] = {
        "mode": opts.int8_mode,
        "preset": opts.preset,
        "calibration": {"split": ctx.data.calibration_split, "images": len(cal_images)},
    }
    verbose = ctx.progress.enabled
    if opts.keep_float:
        details["kept_in_float_by_config"] = list(opts.keep_float)
    if opts.int8_mode == "ptq":
        seen = _PTQ_SEEN.get(_ptq_key(ctx))
        if seen is not None:
            from openvino._offline_transformations import compress_quantize_weights_transformation

            q = seen.clone()
            # Accuracy control keeps float weights behind FakeQuantize; PTQ stores them in INT8
            # (what nncf.quantize does itself with this same pass).
            compress_quantize_weights_transformation(q)
            details["calibration"]["reused"] = "the accuracy-control run's PTQ model"
        else:
            with _nncf_output(verbose):
                q = nncf.quantize(model, nncf.Dataset(calibration), **common)
        details["layers"] = layer_precisions(q)
        return q, details, []

    control = ctx.dataset(opts.control_split).subset(opts.control_size, ctx.data.seed)
    xs = _chunks(ctx.preprocess(control.images), batch)
    ys = _chunks(control.labels, batch, fill=-1)  # padding rows are never positives
    items = list(zip(xs, ys, strict=True))
    metric = SensitivityMetric(*ctx.labels.operating_points(), ctx.output_kind)
    max_drop = ctx.gates.max_sensitivity_drop
    fp32_sens = metric(_compile_f32(model), items)[0]
    if ctx.labels.multilabel:  # from here on the metric is the worst finding's scaled change
        metric.baseline = _findings_sensitivity(metric, model, xs, control.labels)
        limits = [ctx.gates.for_finding(n).max_sensitivity_drop for n in ctx.labels.names]
        metric.scale = max_drop / np.maximum(np.array(limits), 1e-9)
        fp32_sens = 1.0
    with tempfile.TemporaryDirectory(prefix="packager-nncf-") as tmp, _nncf_output(verbose):
        q = nncf.quantize_with_accuracy_control(
            model,
            nncf.Dataset(calibration),
            nncf.Dataset(items, lambda item: item[0]),
            metric,
            max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                intermediate_model_dir=tmp
            ),
            **common,
        )
        # NNCF only logs which layers it reverted; the fully quantized model it started from
        # tells us exactly.
        ptq = ov.Core().read_model(Path(tmp) / "intermediate_model.xml")
        initial = layer_precisions(ptq)
        _PTQ_SEEN[_ptq_key(ctx)] = ptq
    layers = layer_precisions(q)
    int8_sens = metric(_compile_f32(q), items)[0]
    drop = fp32_sens - int8_sens
    details["layers"] = layers
    details["reverted_to_float"] = [n for n in layers["float"] if n not in initial["float"]]
    details["control"] = {
        "split": opts.control_split,
        "images": len(control),
        "positives": int(
            (control.labels == 1).sum()
            if ctx.labels.multilabel
            else (control.labels == ctx.labels.positive_index).sum()
        ),
        "sensitivity_fp32": fp32_sens,
        "sensitivity_int8": int8_sens,
        "drop": drop,
        "max_drop": max_drop,
    }
    if ctx.labels.multilabel:
        int8_each = _findings_sensitivity(metric, q, xs, control.labels)
        details["control"] |= {
            "metric": "1 + the worst finding's sensitivity change from FP32, scaled by "
            "max_sensitivity_drop / the finding's own limit",
            "findings": {
                n: {"fp32": float(b), "int8": float(i)}
                for n, b, i in zip(ctx.labels.names, metric.baseline, int8_each, strict=True)
            },
        }
    check = Check(
        "int8_control_sensitivity_drop",
        round(drop, 6),
        max_drop,
        drop <= max_drop + 1e-12,
        f"accuracy control on split '{opts.control_split}' ({len(control)} images)",
    )
    return q, details, [check]


def int8_note(details: dict[str, Any]) -> str:
    layers = details["layers"]
    total = len(layers["int8"]) + len(layers["float"])
    text = (
        f"INT8 ({details['mode']}, calibrated on {details['calibration']['images']} "
        f"'{details['calibration']['split']}' images): {len(layers['int8'])} of {total} "
        "weighted layers run in INT8"
    )
    if layers["float"]:
        text += "; kept in float: " + ", ".join(layers["float"])
    if "control" in details:
        c = details["control"]
        text += (
            f". Sensitivity on '{c['split']}' ({c['images']} images): fp32 "
            f"{c['sensitivity_fp32']:.4f}, int8 {c['sensitivity_int8']:.4f} "
            f"(drop {c['drop']:.4f}, allowed {c['max_drop']})"
        )
    if not layers["int8"]:
        text += ". No layer runs in INT8: this bundle computes like the fp32 one, without speed-up"
    return text
