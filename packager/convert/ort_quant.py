"""INT8 with onnxruntime.quantization, for targets whose artifact ONNX Runtime runs: a calibration
reader over the build's calibration images, dynamic quantization, and static QDQ quantization."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from packager.core.errors import UserError
from packager.core.model import graph_inputs, upgrade_opset
from packager.shipped.predict import batches

# Per-channel QDQ weights need DequantizeLinear's `axis`, added in opset 13.
QDQ_MIN_OPSET = 13
# A folder where static quantization keeps its calibration ranges (ONNX Runtime's own
# calibration cache), keyed by model and images: a precision search calibrates once.
_CAL_CACHE: ContextVar[Path | None] = ContextVar("calibration_cache", default=None)
# Below this signal-to-quantization-noise ratio (dB) in its worst channel, INT8 destroys an
# activation: the quantization noise is at least a third of the signal.
OFFENDING_SQNR_DB = 10.0


@contextmanager
def shared_calibration(folder: Path) -> Iterator[None]:
    """Within this block, static quantization of the same model on the same images reuses the
    calibration ranges it collected first."""
    token = _CAL_CACHE.set(folder)
    try:
        yield
    finally:
        _CAL_CACHE.reset(token)


def _cache_path(prepared: Path, calibration: np.ndarray) -> Path | None:
    folder = _CAL_CACHE.get()
    if folder is None:
        return None
    h = hashlib.sha256(prepared.read_bytes())
    h.update(np.ascontiguousarray(calibration).tobytes())
    return folder / f"calibration-{h.hexdigest()[:24]}.json"


class CalibrationReader:
    """Feeds calibration images to the quantizer in the model's batch size (the last batch is
    padded by repeating its last image)."""

    def __init__(self, x: np.ndarray, input_name: str, batch: int) -> None:
        self.x = x
        self.input_name = input_name
        self.batch = batch
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        chunk, _ = next(self._batches, (None, 0))
        return None if chunk is None else {self.input_name: np.ascontiguousarray(chunk)}

    def rewind(self) -> None:
        self._batches = batches(self.x, self.batch, self.batch)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:  # qdq_loss_debug iterates readers
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item


def prepare_for_quantization(model: onnx.ModelProto, work: Path) -> Path:
    """The model at a QDQ-capable opset, optimized and shape-inferred as the quantizer advises."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if any(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in graph_inputs(model)):
        raise UserError(
            "INT8 quantization needs a float32 model, this one takes float16; export it in "
            "float32 or build without quantization"
        )
    src, out = work / "float.onnx", work / "prepared.onnx"
    onnx.save(upgrade_opset(model, QDQ_MIN_OPSET), str(src))
    quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    return out


def quantize_dynamic_int8(model: onnx.ModelProto, dst: Path) -> None:
    """INT8 weights, activations quantized on the fly. uint8 weights: ONNX Runtime's CPU
    ConvInteger kernel takes only uint8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="packager-quant-") as tmp:
        quantize_dynamic(
            str(prepare_for_quantization(model, Path(tmp))), str(dst), weight_type=QuantType.QUInt8
        )


def quantize_static_qdq(
    model: onnx.ModelProto,
    dst: Path,
    calibration: np.ndarray,
    batch: int,
    keep_float: Sequence[str] = (),
    *,
    symmetric: bool = False,
    keep_head_float: bool = False,
    cache_file: Path | None = None,
) -> None:
    """QDQ INT8 calibrated on `calibration` (a non-validation split), per-channel int8 weights.

    Default: uint8 activations, min-max ranges — ONNX Runtime's recommended CPU/mobile
    configuration. Nodes named in `keep_float` stay in float (mixed precision). `symmetric`:
    int8 activations with symmetric entropy ranges, what TensorRT executes. `keep_head_float`:
    the last Gemm/MatMul (the logits, a negligible share of the compute) stays in floating
    point. `cache_file` keeps the calibrated ranges."""
    with tempfile.TemporaryDirectory(prefix="packager-quant-") as tmp:
        prepared = prepare_for_quantization(model, Path(tmp))
        _quantize_prepared(
            prepared,
            dst,
            calibration,
            graph_inputs(model)[0].name,
            batch,
            keep_float,
            symmetric=symmetric,
            keep_head_float=keep_head_float,
            cache_file=cache_file,
        )


def _quantize_prepared(
    prepared: Path,
    dst: Path,
    calibration: np.ndarray,
    name: str,
    batch: int,
    keep_float: Sequence[str] = (),
    *,
    symmetric: bool = False,
    keep_head_float: bool = False,
    cache_file: Path | None = None,
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    exclude = list(keep_float)
    if keep_head_float:
        graph = onnx.load(str(prepared))
        for i, node in enumerate(graph.graph.node):
            node.name = node.name or f"{node.op_type}_{i}"  # exclusion goes by name
        onnx.save(graph, str(prepared))
        exclude += [n.name for n in graph.graph.node if n.op_type in ("Gemm", "MatMul")][-1:]
    quantize_static(
        str(prepared),
        str(dst),
        CalibrationReader(calibration, name, batch),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.Entropy if symmetric else CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else {},
        nodes_to_exclude=exclude or None,
        calibration_cache_path=cache_file or _cache_path(prepared, calibration),
    )


def _worst_channel_sqnr(
    pre: Sequence[np.ndarray], post: Sequence[np.ndarray], dims: list[int] | None
) -> float:
    """The lowest per-channel (axis 1 of the tensor's shape `dims`) SQNR in dB between an
    activation before and after its QuantizeLinear/DequantizeLinear pair: a whole-tensor ratio
    hides a channel that INT8 zeroes next to one with a huge range."""
    a = np.concatenate([np.asarray(x, np.float64).ravel() for x in pre])
    b = np.concatenate([np.asarray(x, np.float64).ravel() for x in post])
    per_item = int(np.prod(dims[1:])) if dims and len(dims) >= 2 and all(dims[1:]) else 0
    if per_item and a.size % per_item == 0:  # (items, channels, rest)
        a, b = (
            a.reshape(-1, dims[1], per_item // dims[1]),
            b.reshape(-1, dims[1], per_item // dims[1]),
        )
    else:
        a, b = a.reshape(1, 1, -1), b.reshape(1, 1, -1)
    signal = np.sum(a * a, axis=(0, 2))
    noise = np.sum((a - b) ** 2, axis=(0, 2))
    live = signal > 0
    if not live.any():
        return float("inf")
    sqnr = 10 * np.log10(signal[live] / np.maximum(noise[live], 1e-30))
    return float(sqnr.min())


def _db(x: Any) -> float | None:
    """A ratio in dB for report.json; None where there is no noise (or nothing to compare),
    since JSON has no infinity."""
    return round(float(x), 2) if x is not None and np.isfinite(x) else None


# Ops that pass a range through from the layer before them (an activation after a convolution).
PASS_THROUGH = {"Relu", "Clip", "LeakyRelu", "Identity", "Sigmoid", "Tanh", "HardSigmoid"}


def _origin(tensor: str, producer: dict[str, onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The node producing `tensor`, then back through activation functions to the layer that
    gave it its range."""
    chain = []
    node = producer.get(tensor)
    while node is not None:
        chain.append(node)
        if node.op_type not in PASS_THROUGH or not node.input:
            break
        node = producer.get(node.input[0])
    return chain


def qdq_layer_errors(
    model: onnx.ModelProto, calibration: np.ndarray, batch: int, images: np.ndarray
) -> list[dict[str, Any]]:
    """Per quantized activation, how much error INT8 adds, measured with ONNX Runtime's QDQ
    debugging tools (onnxruntime.quantization.qdq_loss_debug) on `images`: the worst-channel
    SQNR of the tensor before vs after its Q/DQ pair, and the SQNR of the QDQ model against the
    float model at that tensor. Worst first; each names the node producing the tensor and the
    nodes to keep in float so the tensor is not quantized."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    with tempfile.TemporaryDirectory(prefix="packager-qdq-debug-") as tmp:
        work = Path(tmp)
        prepared = prepare_for_quantization(model, work)
        name = graph_inputs(model)[0].name
        _quantize_prepared(prepared, work / "qdq.onnx", calibration, name, batch)
        acts = {}
        for kind, path in (("float", prepared), ("qdq", work / "qdq.onnx")):
            aug = work / f"{kind}_aug.onnx"
            modify_model_output_intermediate_tensors(str(path), str(aug))
            acts[kind] = collect_activations(str(aug), CalibrationReader(images, name, batch))
        graph = onnx.load(str(prepared)).graph
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*graph.value_info, *graph.input, *graph.output]
    }
    matched = create_activation_matching(acts["qdq"], acts["float"])
    sqnr = compute_activation_error(matched)
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.name)
    rows = []
    for tensor, m in matched.items():
        local = _worst_channel_sqnr(m["pre_qdq"], m["post_qdq"], shapes.get(tensor))
        chain = _origin(tensor, producer)
        # Keeping an activation in float: its producers back to the layer that made its range
        # and every node reading one of their outputs.
        keep = {n.name for n in chain}
        keep |= {c for n in chain for o in n.output for c in consumers.get(o, [])}
        rows.append(
            {
                "tensor": tensor,
                "layer": " <- ".join(n.name for n in chain) if chain else "(model input)",
                "origin": chain[-1].name if chain else None,
                "worst_channel_sqnr_db": _db(local),
                "model_sqnr_db": _db(sqnr[tensor].get("xmodel_err")),
                "keep_float": sorted(k for k in keep if k),
            }
        )
    rows.sort(key=lambda r: (r["worst_channel_sqnr_db"] is None, r["worst_channel_sqnr_db"] or 0))
    return rows
