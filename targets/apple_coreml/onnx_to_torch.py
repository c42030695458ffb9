"""ONNX -> torch.nn.Module for the operators CNN classifiers use (apple-coreml only).

Core ML's converter no longer reads ONNX (coremltools 6 dropped it), so the apple-coreml target
goes ONNX -> PyTorch -> torch.export -> Core ML. Why not onnx2torch: it needs a torchvision that
does not install beside the pinned torch here, its last release is from 2024, and it does not
refuse unknown operators by name. This translation covers the classifier families and refuses
anything else, naming the operators. The module interprets the graph node by node;
`torch.export` records it as a static graph (the batch stays symbolic where the export asks).

Floats are computed in FP32 whatever the source's float type (casts to FP16 keep their rounding):
the Core ML conversion decides the deployed precision, and PyTorch's CPU kernels are FP32 kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from packager.core.errors import ModelRefused
from packager.core.model import DEFAULT_DOMAINS, opset_of, qualified, split_op

# A value flowing through the graph: a runtime tensor, a compile-time constant (numpy), or Dims.
Value = Any


class Dims(list):
    """Sizes read from a tensor. While tracing each entry is a 0-d tensor, so shape arithmetic
    stays symbolic (a dynamic batch survives into Core ML); `scalar` marks a single picked dim."""

    def __init__(self, items: Sequence[Any] = (), scalar: bool = False) -> None:
        super().__init__(items)
        self.scalar = scalar


Op = Callable[["Node", list[Value]], list[Value]]


@dataclass
class Node:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 17

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


OPS: dict[str, Op] = {}


def op(*names: str) -> Callable[[Op], Op]:
    def register(fn: Op) -> Op:
        for n in names:
            OPS[n] = fn
        return fn

    return register


def supported_ops() -> list[str]:
    return sorted(OPS)


def uncovered_ops(operators: Iterable[str]) -> list[str]:
    """The operators (qualified by domain, as packager.core.model names them) this translation does
    not cover: anything outside the default ONNX domain, and default ops missing from OPS."""
    return sorted(
        name
        for name in set(operators)
        if split_op(name)[0] not in DEFAULT_DOMAINS or split_op(name)[1] not in OPS
    )


# --- value helpers --------------------------------------------------------------------------


def tensor(v: Value) -> torch.Tensor:
    """Any value as a tensor (floats as FP32, see the module docstring)."""
    if isinstance(v, torch.Tensor):
        return v
    if isinstance(v, Dims):
        t = torch.stack([torch.as_tensor(e, dtype=torch.int64).reshape(()) for e in v])
        return t.reshape(()) if v.scalar else t
    arr = np.asarray(v)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr))


def ints(v: Value) -> list[Any]:
    """A shape-like value as a list of ints (symbolic entries stay traced)."""
    if isinstance(v, Dims):
        return list(v)
    if isinstance(v, torch.Tensor):
        return [int(e) for e in v.reshape(-1).tolist()]
    return [int(e) for e in np.asarray(v).reshape(-1)]


def is_shape(v: Value) -> bool:
    return isinstance(v, Dims)


def maybe(inputs: list[Value], i: int) -> Value:
    return inputs[i] if i < len(inputs) else None


def axes_of(node: Node, inputs: list[Value], index: int) -> list[int] | None:
    """`axes` moved from an attribute to an input in newer opsets; accept both."""
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    v = maybe(inputs, index)
    return None if v is None else ints(v)


def pads_pairs(pads: Sequence[int], rank: int) -> tuple[list[int], list[int]]:
    """ONNX [x1_begin, x2_begin, ..., x1_end, x2_end, ...] -> (begins, ends)."""
    pads = list(pads) or [0] * (2 * rank)
    return pads[:rank], pads[rank:]


def torch_pad(begins: list[int], ends: list[int]) -> list[int]:
    """F.pad takes the last axis first."""
    out: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends), strict=True):
        out += [b, e]
    return out


def spatial_pads(node: Node, x: torch.Tensor, kernel: list[int]) -> tuple[list[int], list[int]]:
    rank = x.dim() - 2
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", "VALID"):
        return pads_pairs(node.attr("pads", []) if auto == "NOTSET" else [], rank)
    # SAME_UPPER / SAME_LOWER need the static spatial size (the batch may stay dynamic).
    strides = node.attr("strides", [1] * rank)
    dil = node.attr("dilations", [1] * rank)
    begins, ends = [], []
    for i in range(rank):
        size = int(x.shape[2 + i])
        out = math.ceil(size / strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - size)
        small, big = total // 2, total - total // 2
        begins.append(big if auto == "SAME_LOWER" else small)
        ends.append(small if auto == "SAME_LOWER" else big)
    return begins, ends


# --- operators ------------------------------------------------------------------------------


@op("Identity", "Dropout")
def _identity(node: Node, i: list[Value]) -> list[Value]:
    return [i[0]]


@op("Constant")
def _constant(node: Node, i: list[Value]) -> list[Value]:
    for key in ("value_float", "value_int"):
        if key in node.attrs:
            return [np.asarray(node.attrs[key])]
    for key in ("value_floats", "value_ints"):
        if key in node.attrs:
            return [np.asarray(list(node.attrs[key]))]
    if "value" in node.attrs:
        return [node.attrs["value"]]
    raise ModelRefused(f"Constant node '{node.name}' has no supported value attribute")


@op("Cast")
def _cast(node: Node, i: list[Value]) -> list[Value]:
    to = onnx.helper.tensor_dtype_to_np_dtype(node.attr("to"))
    if is_shape(i[0]):
        return [i[0]]
    if not isinstance(i[0], torch.Tensor):
        return [np.asarray(i[0]).astype(to)]
    if to.kind == "f":
        # A cast to a narrower float rounds: keep the rounding, compute on in FP32.
        narrow = {2: torch.float16}.get(np.dtype(to).itemsize)
        return [i[0].to(narrow).float() if narrow else i[0].float()]
    if to.kind == "b":
        return [i[0].bool()]
    return [i[0].to(getattr(torch, np.dtype(to).name))]


@op("Conv")
def _conv(node: Node, i: list[Value]) -> list[Value]:
    x, w, b = tensor(i[0]), tensor(i[1]), maybe(i, 2)
    rank = x.dim() - 2
    kernel = list(w.shape[2:])
    begins, ends = spatial_pads(node, x, kernel)
    padding: list[int] | int = begins
    if begins != ends:
        x = F.pad(x, torch_pad(begins, ends))
        padding = 0
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
    return [
        conv(
            x,
            w,
            None if b is None else tensor(b),
            stride=node.attr("strides", [1] * rank),
            padding=padding,
            dilation=node.attr("dilations", [1] * rank),
            groups=node.attr("group", 1),
        )
    ]


@op("BatchNormalization")
def _batch_norm(node: Node, i: list[Value]) -> list[Value]:
    x, scale, bias, mean, var = (tensor(v) for v in i[:5])
    eps = node.attr("epsilon", 1e-5)
    return [F.batch_norm(x, mean, var, scale, bias, training=False, eps=eps)]


def _pool(node: Node, x: torch.Tensor, kind: str) -> torch.Tensor:
    rank = x.dim() - 2
    kernel = list(node.attr("kernel_shape"))
    strides = list(node.attr("strides", [1] * rank))
    dil = list(node.attr("dilations", [1] * rank))
    ceil = bool(node.attr("ceil_mode", 0))
    begins, ends = spatial_pads(node, x, kernel)
    padding: list[int] = begins
    if kind == "max":
        if begins != ends or any(2 * p > k for p, k in zip(begins, kernel, strict=True)):
            x = F.pad(x, torch_pad(begins, ends), value=float("-inf"))
            padding = [0] * rank
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[rank]
        return fn(x, kernel, strides, padding, dil, ceil_mode=ceil)
    if dil != [1] * rank:
        raise ModelRefused(
            f"AveragePool node '{node.name}' uses dilations, which are not supported"
        )
    include = bool(node.attr("count_include_pad", 0))
    if begins != ends or any(2 * p > k for p, k in zip(begins, kernel, strict=True)):
        if not include:
            raise ModelRefused(
                f"AveragePool node '{node.name}' has asymmetric padding that excludes the pad "
                "from the average; export with symmetric pads"
            )
        x = F.pad(x, torch_pad(begins, ends))
        padding = [0] * rank
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[rank]
    return fn(x, kernel, strides, padding, ceil_mode=ceil, count_include_pad=include)


@op("MaxPool")
def _max_pool(node: Node, i: list[Value]) -> list[Value]:
    if len(node.outputs) > 1 and node.outputs[1]:
        raise ModelRefused(f"MaxPool node '{node.name}' returns indices, which are not supported")
    return [_pool(node, tensor(i[0]), "max")]


@op("AveragePool")
def _avg_pool(node: Node, i: list[Value]) -> list[Value]:
    return [_pool(node, tensor(i[0]), "avg")]


@op("GlobalAveragePool")
def _gap(node: Node, i: list[Value]) -> list[Value]:
    x = tensor(i[0])
    return [x.mean(dim=list(range(2, x.dim())), keepdim=True)]


@op("GlobalMaxPool")
def _gmp(node: Node, i: list[Value]) -> list[Value]:
    x = tensor(i[0])
    return [x.amax(dim=list(range(2, x.dim())), keepdim=True)]


UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Relu": F.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Reciprocal": torch.reciprocal,
    "Erf": torch.erf,
    "Softplus": F.softplus,
    "Softsign": F.softsign,
    "HardSwish": F.hardswish,
    "Mish": F.mish,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
}


@op(*UNARY)
def _unary(node: Node, i: list[Value]) -> list[Value]:
    return [UNARY[node.op](tensor(i[0]))]


@op("LeakyRelu")
def _leaky(node: Node, i: list[Value]) -> list[Value]:
    return [F.leaky_relu(tensor(i[0]), node.attr("alpha", 0.01))]


@op("Elu")
def _elu(node: Node, i: list[Value]) -> list[Value]:
    return [F.elu(tensor(i[0]), node.attr("alpha", 1.0))]


@op("Selu")
def _selu(node: Node, i: list[Value]) -> list[Value]:
    alpha = node.attr("alpha", 1.67326319217681884765625)
    gamma = node.attr("gamma", 1.05070102214813232421875)
    x = tensor(i[0])
    return [gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))]


@op("HardSigmoid")
def _hard_sigmoid(node: Node, i: list[Value]) -> list[Value]:
    alpha, beta = node.attr("alpha", 0.2), node.attr("beta", 0.5)
    return [torch.clamp(alpha * tensor(i[0]) + beta, 0.0, 1.0)]


@op("Gelu")
def _gelu(node: Node, i: list[Value]) -> list[Value]:
    return [F.gelu(tensor(i[0]), approximate=node.attr("approximate", "none"))]


@op("PRelu")
def _prelu(node: Node, i: list[Value]) -> list[Value]:
    x, slope = tensor(i[0]), tensor(i[1])
    return [torch.where(x >= 0, x, x * slope)]


@op("Clip")
def _clip(node: Node, i: list[Value]) -> list[Value]:
    lo, hi = node.attr("min"), node.attr("max")  # attributes before opset 11, inputs after
    if maybe(i, 1) is not None:
        lo = i[1] if isinstance(i[1], torch.Tensor) else float(np.asarray(i[1]))
    if maybe(i, 2) is not None:
        hi = i[2] if isinstance(i[2], torch.Tensor) else float(np.asarray(i[2]))
    return [torch.clamp(tensor(i[0]), lo, hi)]


BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": lambda a, b: a / b,
    "Pow": lambda a, b: a**b,
}


@op(*BINARY)
def _binary(node: Node, i: list[Value]) -> list[Value]:
    fn = BINARY[node.op]
    a, b = i[0], i[1]
    if is_shape(a) or is_shape(b):  # shape arithmetic (e.g. H * W) stays in Python ints
        la, lb = ints(a), ints(b)
        n = max(len(la), len(lb))
        la, lb = la * (n // len(la)), lb * (n // len(lb))
        div = node.op == "Div"
        out = [(x // y) if div else fn(x, y) for x, y in zip(la, lb, strict=True)]
        scalar = all(getattr(v, "scalar", np.ndim(v) == 0) for v in (a, b))
        return [Dims(out, scalar)]
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        return [np.asarray(fn(np.asarray(a), np.asarray(b)))]
    return [fn(tensor(a), tensor(b))]


@op("Sum", "Max", "Min", "Mean")
def _variadic(node: Node, i: list[Value]) -> list[Value]:
    ts = [tensor(v) for v in i]
    out = ts[0]
    for t in ts[1:]:
        out = (
            torch.maximum(out, t)
            if node.op == "Max"
            else torch.minimum(out, t)
            if node.op == "Min"
            else out + t
        )
    return [out / len(ts) if node.op == "Mean" else out]


@op("MatMul")
def _matmul(node: Node, i: list[Value]) -> list[Value]:
    return [torch.matmul(tensor(i[0]), tensor(i[1]))]


@op("Gemm")
def _gemm(node: Node, i: list[Value]) -> list[Value]:
    a, b, c = tensor(i[0]), tensor(i[1]), maybe(i, 2)
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    if node.attr("transA", 0):
        a = a.t()
    if alpha == 1.0 and beta == 1.0:  # the common case becomes one linear op for Core ML
        w = b if node.attr("transB", 0) else b.t()
        return [F.linear(a, w, None if c is None else tensor(c))]
    y = alpha * torch.matmul(a, b.t() if node.attr("transB", 0) else b)
    return [y if c is None else y + beta * tensor(c)]


@op("Flatten")
def _flatten(node: Node, i: list[Value]) -> list[Value]:
    x = tensor(i[0])
    axis = node.attr("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    if axis == 0:
        return [x.reshape(1, -1)]
    if axis == x.dim():
        return [x.reshape(-1, 1)]
    lead = x.flatten(0, axis - 1) if axis > 1 else x
    return [lead.flatten(1)]


@op("Reshape")
def _reshape(node: Node, i: list[Value]) -> list[Value]:
    x = tensor(i[0])
    shape = ints(i[1])
    if not node.attr("allowzero", 0):  # 0 copies the input's dimension
        shape = [x.shape[k] if isinstance(d, int) and d == 0 else d for k, d in enumerate(shape)]
    return [x.reshape(shape)]


@op("Transpose")
def _transpose(node: Node, i: list[Value]) -> list[Value]:
    x = tensor(i[0])
    perm = node.attr("perm", list(reversed(range(x.dim()))))
    return [x.permute(*perm)]


def _softmax(node: Node, x: torch.Tensor, log: bool) -> torch.Tensor:
    fn = torch.log_softmax if log else torch.softmax
    if node.opset >= 13:
        return fn(x, dim=node.attr("axis", -1))
    # Before opset 13 the input is coerced to 2-D at `axis` (default 1).
    axis = node.attr("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    if axis == x.dim() - 1:
        return fn(x, dim=-1)
    return fn(x.flatten(axis), dim=-1).reshape(x.shape)


@op("Softmax")
def _softmax_op(node: Node, i: list[Value]) -> list[Value]:
    return [_softmax(node, tensor(i[0]), log=False)]


@op("LogSoftmax")
def _log_softmax_op(node: Node, i: list[Value]) -> list[Value]:
    return [_softmax(node, tensor(i[0]), log=True)]


@op("Concat")
def _concat(node: Node, i: list[Value]) -> list[Value]:
    if any(is_shape(v) for v in i):
        out: list[Any] = []
        for v in i:
            out += ints(v)
        return [Dims(out)]
    if not any(isinstance(v, torch.Tensor) for v in i):
        return [np.concatenate([np.asarray(v) for v in i], axis=node.attr("axis"))]
    return [torch.cat([tensor(v) for v in i], dim=node.attr("axis"))]


@op("Shape")
def _shape(node: Node, i: list[Value]) -> list[Value]:
    dims = list(tensor(i[0]).shape)
    start, end = node.attr("start", 0), node.attr("end")
    return [Dims(dims[start:end])]


@op("Gather")
def _gather(node: Node, i: list[Value]) -> list[Value]:
    data, idx = i[0], i[1]
    axis = node.attr("axis", 0)
    if isinstance(idx, torch.Tensor):
        raise ModelRefused(
            f"Gather node '{node.name}' has computed indices, which are not supported"
        )
    index = np.asarray(idx)
    if is_shape(data):
        picked = [data[int(k)] for k in index.reshape(-1)]
        return [Dims(picked, scalar=index.ndim == 0)]
    if not isinstance(data, torch.Tensor):
        return [np.take(np.asarray(data), index, axis=axis)]
    x = data
    if index.ndim == 0:
        return [x.select(axis, int(index))]
    flat = torch.from_numpy(index.reshape(-1).astype(np.int64))
    out = torch.index_select(x, axis, flat)
    axis = axis + x.dim() if axis < 0 else axis
    return [out.reshape(*x.shape[:axis], *index.shape, *x.shape[axis + 1 :])]


@op("Unsqueeze")
def _unsqueeze(node: Node, i: list[Value]) -> list[Value]:
    axes = axes_of(node, i, 1) or []
    v = i[0]
    if is_shape(v):
        return [Dims(v)]  # a picked dim becomes a 1-element shape
    if not isinstance(v, torch.Tensor):
        return [np.expand_dims(np.asarray(v), tuple(axes))]
    rank = v.dim() + len(axes)
    for a in sorted(a + rank if a < 0 else a for a in axes):
        v = v.unsqueeze(a)
    return [v]


@op("Squeeze")
def _squeeze(node: Node, i: list[Value]) -> list[Value]:
    axes = axes_of(node, i, 1)
    v = i[0]
    if is_shape(v):
        return [Dims(v, scalar=len(v) == 1)]
    if not isinstance(v, torch.Tensor):
        arr = np.asarray(v)
        return [np.squeeze(arr, axis=None if axes is None else tuple(axes))]
    if axes is None:
        return [v.squeeze()]
    x = v
    for a in sorted((a + x.dim() if a < 0 else a for a in axes), reverse=True):
        x = x.squeeze(a)
    return [x]


def _reduce(node: Node, i: list[Value], fn: Callable[..., torch.Tensor]) -> list[Value]:
    x = tensor(i[0])
    axes = axes_of(node, i, 1)
    keep = bool(node.attr("keepdims", 1))
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(x.dim()))
    return [fn(x, dim=axes, keepdim=keep)]


@op("ReduceMean")
def _reduce_mean(node: Node, i: list[Value]) -> list[Value]:
    return _reduce(node, i, torch.mean)


@op("ReduceSum")
def _reduce_sum(node: Node, i: list[Value]) -> list[Value]:
    return _reduce(node, i, torch.sum)


@op("ReduceMax")
def _reduce_max(node: Node, i: list[Value]) -> list[Value]:
    return _reduce(node, i, torch.amax)


@op("Pad")
def _pad(node: Node, i: list[Value]) -> list[Value]:
    x = tensor(i[0])
    pads = node.attr("pads") if "pads" in node.attrs else ints(i[1])
    value = node.attr("value", 0.0)
    if maybe(i, 2) is not None:
        value = float(np.asarray(i[2]))
    if maybe(i, 3) is not None:
        raise ModelRefused(
            f"Pad node '{node.name}' pads selected axes only, which is not supported"
        )
    begins, ends = pads_pairs(pads, x.dim())
    mode = node.attr("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode == "constant":
        return [F.pad(x, torch_pad(begins, ends), value=value)]
    if begins[:2] != [0, 0] or ends[:2] != [0, 0]:
        raise ModelRefused(f"Pad node '{node.name}' pads batch or channels in {mode} mode")
    torch_mode = {"reflect": "reflect", "edge": "replicate"}.get(mode)
    if torch_mode is None:
        raise ModelRefused(f"Pad node '{node.name}' uses mode '{mode}', which is not supported")
    return [F.pad(x, torch_pad(begins[2:], ends[2:]), mode=torch_mode)]


@op("Slice")
def _slice(node: Node, i: list[Value]) -> list[Value]:
    if "starts" in node.attrs:  # before opset 10
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes, steps = node.attr("axes"), None
    else:
        starts, ends = ints(i[1]), ints(i[2])
        axes = None if maybe(i, 3) is None else ints(i[3])
        steps = None if maybe(i, 4) is None else ints(i[4])
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    v = i[0]
    if is_shape(v):
        return [Dims(v[slice(starts[0], ends[0], steps[0])])]
    x = tensor(v)
    big = 2**62
    for a, s, e, st in zip(axes, starts, ends, steps, strict=True):
        if st != 1:
            raise ModelRefused(f"Slice node '{node.name}' uses step {st}, which is not supported")
        dim = x.shape[a]
        s = max(s + dim, 0) if s < 0 else min(s, dim) if s < big else dim
        e = max(e + dim, 0) if e < 0 else min(e, dim) if e < big else dim
        x = x.narrow(a, s, max(e - s, 0))
    return [x]


@op("Resize", "Upsample")
def _resize(node: Node, i: list[Value]) -> list[Value]:
    x = tensor(i[0])
    mode = node.attr("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ctm = node.attr("coordinate_transformation_mode", "half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    if node.op == "Upsample":
        scales, sizes = i[1] if len(i) > 1 else node.attr("scales"), None
        ctm = "asymmetric"
    else:
        scales = maybe(i, 2)
        sizes = maybe(i, 3)
    spatial = x.dim() - 2
    kwargs: dict[str, Any] = {}
    if sizes is not None and len(ints(sizes)):
        kwargs["size"] = ints(sizes)[2:]
    else:
        sc = [float(s) for s in np.asarray(scales).reshape(-1)]
        if sc[:2] != [1.0, 1.0]:
            raise ModelRefused(f"Resize node '{node.name}' scales batch or channels")
        kwargs["scale_factor"] = sc[2:]
    if mode == "nearest":
        nearest = node.attr("nearest_mode", "round_prefer_floor")
        nearest = nearest.decode() if isinstance(nearest, bytes) else nearest
        if ctm != "asymmetric" or (node.op == "Resize" and nearest != "floor"):
            raise ModelRefused(
                f"Resize node '{node.name}': nearest mode needs coordinate_transformation_mode "
                "'asymmetric' with nearest_mode 'floor' (PyTorch's nearest)"
            )
        return [F.interpolate(x, mode="nearest", **kwargs)]
    if mode == "linear":
        align = {"align_corners": True, "half_pixel": False, "pytorch_half_pixel": False}.get(ctm)
        if align is None:
            raise ModelRefused(
                f"Resize node '{node.name}' uses coordinate_transformation_mode '{ctm}' "
                "with linear mode, which is not supported"
            )
        interp = {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial]
        return [F.interpolate(x, mode=interp, align_corners=align, **kwargs)]
    raise ModelRefused(f"Resize node '{node.name}' uses mode '{mode}', which is not supported")


# --- the module -----------------------------------------------------------------------------

# Inputs read as Python numbers at conversion time (the ops above call np.asarray on them).
STATIC_INPUTS: dict[str, tuple[int, ...]] = {
    "Clip": (1, 2),
    "Pad": (1, 2, 3),
    "Resize": (1, 2, 3),
    "Upsample": (1,),
}


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[a.name] = value
    return out


class OnnxModule(nn.Module):
    """The graph of an ONNX model (one input, one output) as a PyTorch module."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        graph = model.graph
        opset = opset_of(model)
        unknown = uncovered_ops(qualified(n.domain, n.op_type) for n in graph.node)
        if unknown:
            raise ModelRefused(
                f"the model uses {', '.join(unknown)}, which the ONNX->PyTorch translation for "
                "Core ML does not cover (it covers the usual CNN classifier operators); "
                "re-export without them or choose another target"
            )
        init_names = {i.name for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in init_names]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise ModelRefused("the Core ML translation takes models with one input and one output")
        self.input_name, self.output_name = inputs[0].name, graph.output[0].name
        self.fp16_output = graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
        # Float initializers become buffers (weights in the state dict); the rest, and floats
        # that act as parameters (clip bounds, pad values, resize scales), stay compile-time
        # constants.
        static = {
            name
            for n in graph.node
            for k, name in enumerate(n.input)
            if k in STATIC_INPUTS.get(n.op_type, ())
        }
        self.buffer_of: dict[str, str] = {}
        self.constants: dict[str, np.ndarray] = {}
        for k, init in enumerate(graph.initializer):
            arr = numpy_helper.to_array(init)
            if arr.dtype.kind == "f" and init.name not in static:
                attr = f"w{k}"
                self.register_buffer(attr, torch.from_numpy(arr.astype(np.float32).copy()))
                self.buffer_of[init.name] = attr
            else:
                self.constants[init.name] = arr
        self.nodes = [
            Node(
                n.op_type,
                n.name or f"{n.op_type}_{k}",
                list(n.input),
                list(n.output),
                _attrs(n),
                opset,
            )
            for k, n in enumerate(graph.node)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, Value] = dict(self.constants)
        for name, attr in self.buffer_of.items():
            env[name] = getattr(self, attr)
        env[self.input_name] = x.float()
        for node in self.nodes:
            args = [env[n] if n else None for n in node.inputs]
            # Optional trailing inputs may be empty names; keep positions for the op.
            outs = OPS[node.op](node, args)
            for name, value in zip(node.outputs, outs, strict=False):
                if name:
                    env[name] = value
        out = tensor(env[self.output_name]).float()
        return out.half().float() if self.fp16_output else out  # the source's output rounding


def to_torch(model: onnx.ModelProto) -> OnnxModule:
    """Translate `model` (checked by packager.core.model.inspect_model) into an eval-mode module."""
    return OnnxModule(model).eval()
