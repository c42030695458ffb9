"""INT8 with onnxruntime.quantization, for targets whose artifact ONNX Runtime runs: a calibration
reader over the build's calibration images, dynamic quantization, and static QDQ quantization."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from packager.errors import UserError
from packager.model import graph_inputs, upgrade_opset

# Per-channel QDQ weights need DequantizeLinear's `axis`, added in opset 13.
QDQ_MIN_OPSET = 13


class CalibrationReader:
    """Feeds calibration images to the quantizer in the model's batch size (the last batch is
    padded by repeating its last image when the batch size is fixed)."""

    def __init__(self, x: np.ndarray, input_name: str, batch: int) -> None:
        self.x = x
        self.input_name = input_name
        self.batch = batch
        self.pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.x):
            return None
        chunk = self.x[self.pos : self.pos + self.batch]
        self.pos += self.batch
        if len(chunk) < self.batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - len(chunk), axis=0)])
        return {self.input_name: np.ascontiguousarray(chunk)}

    def rewind(self) -> None:
        self.pos = 0


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
    *,
    symmetric: bool = False,
    keep_head_float: bool = False,
    cache_file: Path | None = None,
) -> None:
    """QDQ INT8 calibrated on `calibration` (a non-validation split), per-channel int8 weights.

    Default: uint8 activations, min-max ranges — ONNX Runtime's recommended CPU/mobile
    configuration. `symmetric`: int8 activations with symmetric entropy ranges, what TensorRT
    executes. `keep_head_float`: the last Gemm/MatMul (the logits, a negligible share of the
    compute) stays in floating point. `cache_file` keeps the calibrated ranges."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory(prefix="packager-quant-") as tmp:
        prepared_path = prepare_for_quantization(model, Path(tmp))
        prepared = onnx.load(str(prepared_path))
        for i, node in enumerate(prepared.graph.node):
            node.name = node.name or f"{node.op_type}_{i}"  # exclusion goes by name
        onnx.save(prepared, str(prepared_path))
        heads = [n.name for n in prepared.graph.node if n.op_type in ("Gemm", "MatMul")][-1:]
        quantize_static(
            str(prepared_path),
            str(dst),
            CalibrationReader(calibration, graph_inputs(prepared)[0].name, batch),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=heads if keep_head_float else [],
            calibrate_method=CalibrationMethod.Entropy if symmetric else CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True}
            if symmetric
            else {},
            calibration_cache_path=str(cache_file) if cache_file else None,
        )
