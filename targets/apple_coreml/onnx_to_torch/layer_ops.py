"""The translation's arithmetic and layer operators: convolution, normalization, pooling,
activations, element-wise arithmetic, matrix products, softmax and reductions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from packager.core.errors import ModelRefused
from packager.targets.apple_coreml.onnx_to_torch.values import (
    Dims,
    Node,
    Op,
    Value,
    axes_of,
    ints,
    is_shape,
    maybe,
    registrar,
    spatial_pads,
    tensor,
    torch_pad,
)

OPS: dict[str, Op] = {}
op = registrar(OPS)


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
