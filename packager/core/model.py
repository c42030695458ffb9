"""Model intake: checks, IO signature, batch mode, FLOPs and op histogram (`packager inspect`)."""

from __future__ import annotations

import collections
import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from packager.core.data import file_sha256
from packager.core.errors import UserError

FLOAT_TYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16"}
MAX_DIM = 16384
MAX_INPUT_ELEMENTS = 1 << 28


@dataclass
class TensorSpec:
    name: str
    shape: list[int | str]  # str: a symbolic (dynamic) dimension
    dtype: str


@dataclass
class Quantization:
    """How a pre-quantized model is quantized: "QOperator" (quantized operators such as
    QLinearConv, com.microsoft.QGemm, ConvInteger) or "QDQ" (float operators between
    QuantizeLinear / DequantizeLinear pairs, which runtimes fuse into INT8 kernels)."""

    format: str
    operators: list[str]  # the quantization operators found, qualified by domain
    domains: list[str]  # every operator domain the model uses ("ai.onnx" for the default)


DEFAULT_DOMAINS = ("", "ai.onnx")
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
# Quantized operators of the QOperator format besides the QLinear* family (ONNX Runtime's
# quantizer writes these; the com.microsoft ones are ONNX Runtime contrib operators).
QOPERATOR_OPS = {
    "ConvInteger",
    "MatMulInteger",
    "QGemm",
    "QAttention",
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM",
    "MatMulIntegerToFloat",
    "QEmbedLayerNormalization",
}


def qualified(domain: str, op_type: str) -> str:
    """An operator's name as runtimes report it: bare in the default domain, else domain.op."""
    return op_type if domain in DEFAULT_DOMAINS else f"{domain}.{op_type}"


def split_op(name: str) -> tuple[str, str]:
    """("com.microsoft", "QGemm") from "com.microsoft.QGemm"; ("", "Conv") from "Conv"."""
    domain, _, op_type = name.rpartition(".")
    return domain, op_type


def is_qoperator(op_type: str) -> bool:
    return op_type.startswith("QLinear") or op_type in QOPERATOR_OPS


def quantization_of(model: onnx.ModelProto) -> Quantization | None:
    nodes = [(n.domain, n.op_type) for n in model.graph.node]
    domains = sorted({d or "ai.onnx" for d, _ in nodes})
    qop = sorted({qualified(d, o) for d, o in nodes if is_qoperator(o)})
    if qop:
        return Quantization("QOperator", qop, domains)
    qdq = sorted({qualified(d, o) for d, o in nodes if o in QDQ_OPS})
    return Quantization("QDQ", qdq, domains) if qdq else None


@dataclass
class ModelInfo:
    path: str
    sha256: str
    size_bytes: int
    external_data: list[str]
    ir_version: int
    opset: int
    producer: str
    input: TensorSpec
    output: TensorSpec
    batch: str | int  # "dynamic" or the fixed batch size
    layout: str | None  # "NCHW" / "NHWC" guessed from the channel axis; None when unclear
    channels: int | None
    spatial: list[int | None]  # H, W (None when dynamic)
    num_classes: int | None
    ends_with_softmax: bool  # Softmax or Sigmoid: the outputs are probabilities
    params: int
    macs_per_sample: int | None
    ops: dict[str, int] = field(default_factory=dict)
    # Operators qualified by domain ("com.microsoft.QGemm"; default-domain ones bare), and the
    # opset of each domain ("ai.onnx" for the default): what a target's support check reads.
    operators: dict[str, int] = field(default_factory=dict)
    opsets: dict[str, int] = field(default_factory=dict)
    quantization: Quantization | None = None  # None: a float model
    activation: str | None = None  # "Softmax" / "Sigmoid" at the output, else None (logits)

    @property
    def gflops_per_sample(self) -> float | None:
        return None if self.macs_per_sample is None else 2 * self.macs_per_sample / 1e9

    @property
    def fixed_batch(self) -> int | None:
        return self.batch if isinstance(self.batch, int) else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["gflops_per_sample"] = self.gflops_per_sample
        return out


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    dims: list[int | str] = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return dims


def _dtype(vi: onnx.ValueInfoProto) -> str:
    elem = vi.type.tensor_type.elem_type
    if elem in FLOAT_TYPES:
        return FLOAT_TYPES[elem]
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem).name
    except (KeyError, ValueError, TypeError):  # UNDEFINED, or not a tensor at all
        return f"elem_type {elem}"


def load_model(path: str | Path) -> onnx.ModelProto:
    """Load a model with its external data, refusing files that escape the model's folder."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"model {p} is a directory; pass the .onnx file itself")
    if not p.is_file():
        raise UserError(f"model {p} does not exist; check --model / [model] path")
    if p.stat().st_size == 0:
        raise UserError(f"model {p} is empty; re-export it")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning or ValueError
        raise UserError(
            f"{p} is not a valid ONNX file ({type(exc).__name__}); re-export it"
        ) from None
    if not model.HasField("graph") or not model.graph.node:
        raise UserError(f"{p} is not an ONNX model (no graph); pass the exported .onnx file")
    _check_external_data(model, p)
    try:
        onnx.load_external_data_for_model(model, str(p.parent))
    except Exception as exc:
        raise UserError(f"{p}: cannot read its external data ({exc})") from None
    return model


def external_files(model: onnx.ModelProto) -> list[str]:
    files = []
    for init in model.graph.initializer:
        if init.data_location == TensorProto.EXTERNAL:
            loc = {e.key: e.value for e in init.external_data}.get("location", "")
            if loc not in files:
                files.append(loc)
    return files


def _check_external_data(model: onnx.ModelProto, path: Path) -> None:
    base = path.parent.resolve()
    for loc in external_files(model):
        try:
            target = (base / loc).resolve()
        except (OSError, ValueError, RuntimeError) as exc:  # NUL byte, symlink loop
            raise UserError(
                f"{path}: external data location {loc!r} is not a usable path ({exc}); "
                "re-export the model"
            ) from None
        if not loc or Path(loc).is_absolute() or not target.is_relative_to(base):
            raise UserError(
                f"{path}: external data location {loc!r} points outside the model's folder; "
                "refusing to read it (re-export with the data beside the model)"
            )
        if not target.is_file():
            raise UserError(
                f"{path}: external data file {loc!r} is missing; copy it beside the model"
            )


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgrade_opset(model: onnx.ModelProto, minimum: int) -> onnx.ModelProto:
    """Return the model at opset >= `minimum` (targets whose tools need a newer opset)."""
    if opset_of(model) >= minimum:
        return model
    try:
        return onnx.version_converter.convert_version(model, minimum)
    except Exception as exc:
        raise UserError(
            f"cannot upgrade the model from opset {opset_of(model)} to {minimum}: {exc}"
        ) from None


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def inspect_model(path: str | Path) -> ModelInfo:
    p = Path(path)
    model = load_model(p)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # ValidationError, or a C++ error for broken protos
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{p} fails the ONNX checker: {msg}") from None
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise UserError(
            f"{p} has {len(inputs)} inputs ({names}); packager handles single-image classifiers "
            "with one input tensor"
        )
    if len(model.graph.output) != 1:
        names = ", ".join(o.name for o in model.graph.output)
        raise UserError(
            f"{p} has {len(model.graph.output)} outputs ({names}); keep only the class-score "
            "output when exporting"
        )
    inp, out = inputs[0], model.graph.output[0]
    if inp.type.tensor_type.elem_type not in FLOAT_TYPES:
        raise UserError(
            f"{p}: input '{inp.name}' is {_dtype(inp)}; packager feeds float32 or float16 "
            "image tensors (export with a float input)"
        )
    in_shape, out_shape = _dims(inp), _dims(out)
    if len(in_shape) != 4:
        raise UserError(
            f"{p}: input '{inp.name}' has rank {len(in_shape)} {in_shape}; expected an image "
            "batch (N, C, H, W) or (N, H, W, C)"
        )
    for d in in_shape:
        if isinstance(d, int) and d > MAX_DIM:
            raise UserError(f"{p}: input dimension {d} is absurd (> {MAX_DIM}); check the export")
    static = [d for d in in_shape if isinstance(d, int)]
    if static and int(np.prod(static, dtype=np.int64)) > MAX_INPUT_ELEMENTS:
        raise UserError(f"{p}: input shape {in_shape} is too large for an image classifier")
    layout = "NCHW" if in_shape[1] in (1, 3) else "NHWC" if in_shape[3] in (1, 3) else None
    channels = in_shape[1] if layout == "NCHW" else in_shape[3] if layout == "NHWC" else None
    hw = in_shape[2:4] if layout == "NCHW" else in_shape[1:3] if layout == "NHWC" else [None, None]
    spatial = [d if isinstance(d, int) else None for d in hw]
    num_classes = _classes(p, out, out_shape)
    inferred = _infer(model)
    params = sum(int(np.prod(i.dims, dtype=np.int64)) for i in model.graph.initializer)
    info = ModelInfo(
        path=str(p),
        sha256=file_sha256(p),
        size_bytes=p.stat().st_size
        + sum((p.parent / f).stat().st_size for f in external_files(model)),
        external_data=external_files(model),
        ir_version=model.ir_version,
        opset=opset_of(model),
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        input=TensorSpec(inp.name, in_shape, _dtype(inp)),
        output=TensorSpec(out.name, out_shape, _dtype(out)),
        batch=in_shape[0] if isinstance(in_shape[0], int) else "dynamic",
        layout=layout,
        channels=channels if isinstance(channels, int) else None,
        spatial=spatial,
        num_classes=num_classes,
        ends_with_softmax=final_activation(model, out.name) is not None,
        activation=final_activation(model, out.name),
        params=params,
        macs_per_sample=None,
        ops=dict(sorted(collections.Counter(n.op_type for n in inferred.graph.node).items())),
        operators=dict(
            sorted(
                collections.Counter(
                    qualified(n.domain, n.op_type) for n in model.graph.node
                ).items()
            )
        ),
        opsets={o.domain or "ai.onnx": o.version for o in model.opset_import},
        quantization=quantization_of(model),
    )
    if all(isinstance(d, int) for d in in_shape[1:]):
        info.macs_per_sample = count_macs(model, [1, *in_shape[1:]])  # type: ignore[list-item]
    return info


PASS_THROUGH = {"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}


def final_activation(model: onnx.ModelProto, name: str) -> str | None:
    """ "Softmax" or "Sigmoid" when the output is one, looking through shape-only ops and casts."""
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get(name)
    while node is not None and node.op_type in PASS_THROUGH:
        node = producers.get(node.input[0])
    # LogSoftmax is not listed: softmax of log-probabilities gives the probabilities back.
    return node.op_type if node is not None and node.op_type in ("Softmax", "Sigmoid") else None


def likely_task(info: ModelInfo) -> str:
    """What the model's tail says its task is, for `inspect` ([labels] task decides)."""
    k = info.num_classes
    if info.activation == "Sigmoid" and (k or 0) > 1:
        return f"multilabel ({k} outputs, each through its own Sigmoid)"
    if k is None:
        return "unknown (dynamic output size)"
    one = "binary" if k == 2 else "multiclass" if k > 2 else "one output"
    how = "ending in Softmax" if info.activation == "Softmax" else "logits"
    return (
        f"{one} ({k} outputs, {how}); multilabel if [labels] task says so or the data has one "
        "0/1 column per name"
    )


def _classes(p: Path, out: onnx.ValueInfoProto, shape: list[int | str]) -> int | None:
    if out.type.tensor_type.elem_type not in FLOAT_TYPES:
        raise UserError(f"{p}: output '{out.name}' is {_dtype(out)}; expected float class scores")
    if len(shape) not in (1, 2):
        raise UserError(
            f"{p}: output '{out.name}' has shape {shape}; expected class scores [N, classes] "
            "or [classes]"
        )
    classes = shape[-1]
    if isinstance(classes, int) and classes < 2:
        raise UserError(
            f"{p}: output '{out.name}' has {classes} score; packager needs one score per class "
            "(export 2 logits for a binary model)"
        )
    return classes if isinstance(classes, int) else None


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is best effort: a model ORT runs may still defeat it
        return model


def with_input_shape(model: onnx.ModelProto, shape: list[int]) -> onnx.ModelProto:
    """A copy whose single input has the concrete `shape` (for per-sample counts)."""
    m = copy.deepcopy(model)
    inp = graph_inputs(m)[0]
    dims = inp.type.tensor_type.shape.dim
    for d, v in zip(dims, shape, strict=True):
        d.Clear()
        d.dim_value = v
    for vi in list(m.graph.value_info):
        m.graph.value_info.remove(vi)
    for o in m.graph.output:
        o.type.tensor_type.shape.Clear()
    return m


def count_macs(model: onnx.ModelProto, shape: list[int]) -> int | None:
    """Multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul for one input of `shape`."""
    inferred = _infer(with_input_shape(model, shape))
    shapes: dict[str, list[int | str]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        shapes[vi.name] = _dims(vi)
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0
    for node in inferred.graph.node:
        try:
            total += _node_macs(node, shapes)
        except (KeyError, IndexError, TypeError):
            return None  # an unknown shape: better no number than a wrong one
    return total


def _prod(dims: list[int | str]) -> int:
    if not all(isinstance(d, int) for d in dims):
        raise TypeError("symbolic dimension")
    return int(np.prod(dims, dtype=np.int64))


def _node_macs(node: onnx.NodeProto, shapes: dict[str, list[int | str]]) -> int:
    if node.op_type == "Conv":
        return _prod(shapes[node.output[0]]) * _prod(shapes[node.input[1]][1:])
    if node.op_type == "ConvTranspose":
        return _prod(shapes[node.input[0]]) * _prod(shapes[node.input[1]][1:])
    if node.op_type == "Gemm":
        a = shapes[node.input[0]]
        trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
        k = a[0] if trans_a else a[1]
        return _prod(shapes[node.output[0]]) * _prod([k])
    if node.op_type == "MatMul":
        return _prod(shapes[node.output[0]]) * _prod([shapes[node.input[0]][-1]])
    return 0
