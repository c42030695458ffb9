"""gpu-tensorrt's conversion: the ONNX graph the bundle ships (FP16, INT8 Q/DQ or as it is), the
TensorRT engine built from it on this host's GPU, and what TensorRT's ONNX parser refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from packager.convert.ort_quant import quantize_static_qdq
from packager.core.errors import ConversionFailed, UserError
from packager.core.model import DEFAULT_DOMAINS, ModelInfo, is_qoperator, load_model, split_op
from packager.core.target import REEXPORT_QDQ, BuildContext
from packager.targets.gpu_tensorrt.runtime import dims
from packager.targets.gpu_tensorrt.serve import Io


def shipped_onnx(ctx: BuildContext, precision: str, dest: Path, cache_file: Path) -> None:
    """The ONNX graph this bundle ships (and the proxy runs): the source as it is (precision
    "fp32" or "source"), converted to FP16 with the source's input/output types kept, or INT8
    with explicit Q/DQ scales."""
    model = load_model(ctx.model_path)
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel

        # Same IO types as the source: clients and preprocess.json stay unchanged.
        converted = OnnxModel(convert_float_to_float16(model, keep_io_types=True))
        converted.topological_sort()  # the converter appends its IO casts at the end
        try:  # a graph the converter broke is this target's failure, not the runtime's later
            onnx.checker.check_model(converted.model, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            text = str(exc).strip()
            raise ConversionFailed(
                f"the FP16 conversion wrote an invalid ONNX graph: {text.splitlines()[0]}; "
                'set [targets.gpu-tensorrt] precision = "fp32"',
                log=text,
            ) from None
        onnx.save(converted.model, str(dest))
    elif precision == "int8":
        # INT8 the way TensorRT 10 wants it: explicit Q/DQ (its implicit calibrators are
        # deprecated), symmetric ranges; the logits stay in floating point.
        quantize_static_qdq(
            model,
            dest,
            ctx.calibration(),
            batch=16,
            symmetric=True,
            keep_head_float=True,
            cache_file=cache_file,
        )
    else:
        onnx.save(model, str(dest))


def build_engine(onnx_path: Path, plan: Path, io: Io, precision: str, workspace_mb: int) -> str:
    """Serialize a TensorRT engine for the GPU of this host; returns the TensorRT version."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse the model: {errors or 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # INT8: layers without Q/DQ run in FP16
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # scales come from the model's Q/DQ nodes
    if any(d < 0 for d in dims(network.get_input(0).shape)):  # static inputs take no profile
        shapes = builder.create_optimization_profile()
        min_, opt, max_ = (tuple(io.profile[k]) for k in ("min", "opt", "max"))
        # tuples convert to Dims at run time; tensorrt-stubs does not declare it
        shapes.set_shape(io.input.name, min_, opt, max_)  # type: ignore[arg-type]
        config.add_optimization_profile(shapes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(
            "TensorRT could not build an engine for this model (see its log above); "
            'ship the portable form with engine = "skip"'
        )
    plan.write_bytes(memoryview(serialized))
    return trt.__version__


# --- what the TensorRT ONNX parser takes ------------------------------------------------------


def _zero_points(model: onnx.ModelProto) -> list[np.ndarray | None]:
    """Each QuantizeLinear's zero point (None when it is computed in the graph)."""
    consts = {i.name: i for i in model.graph.initializer}
    consts |= {
        n.output[0]: n.attribute[0].t
        for n in model.graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"
    }
    out: list[np.ndarray | None] = []
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear":
            continue
        if len(n.input) < 3 or not n.input[2]:  # absent: uint8 zero
            out.append(np.zeros(1, np.uint8))
        else:
            t = consts.get(n.input[2])
            out.append(None if t is None else onnx.numpy_helper.to_array(t))
    return out


def parser_refusal(model: ModelInfo) -> str:
    """Why TensorRT's ONNX parser would refuse `model`, from its documented support matrix
    (onnx-tensorrt docs/operators.md): the default ONNX domain only (other domains need a
    TensorRT plugin), no QOperator-format operators (QLinearConv, QLinearMatMul, ...), and
    QuantizeLinear with a zero point of 0 (symmetric INT8). Empty: it takes the model."""
    foreign = [n for n in model.operators if split_op(n)[0] not in DEFAULT_DOMAINS]
    qop = [n for n in model.operators if is_qoperator(split_op(n)[1])]
    if foreign or qop:
        why = []
        if qop:
            why.append(
                "QOperator-format quantization (TensorRT builds INT8 from QuantizeLinear/"
                f"DequantizeLinear pairs): {REEXPORT_QDQ} with symmetric INT8 activations"
            )
        if [n for n in foreign if n not in qop]:
            why.append("operators outside the default ONNX domain need a TensorRT plugin")
        return (
            f"TensorRT's ONNX parser has no importer for {', '.join(sorted({*foreign, *qop}))}: "
            + "; ".join(why)
        )
    if model.quantization:
        zps = _zero_points(onnx.load(model.path, load_external_data=False))
        bad = [z for z in zps if z is not None and (z.dtype != np.int8 or np.any(z != 0))]
        if bad:
            types = sorted({str(z.dtype) for z in bad})
            return (
                f"TensorRT needs QuantizeLinear zero points of 0 in int8 (symmetric INT8); "
                f"{len(bad)} of {len(zps)} here are {'/'.join(types)} or non-zero: re-quantize "
                "with activation_type=QuantType.QInt8 and extra_options={'ActivationSymmetric': "
                "True, 'WeightSymmetric': True}"
            )
    return ""
