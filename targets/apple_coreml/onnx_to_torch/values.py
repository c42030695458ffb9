"""The values the ONNX->PyTorch translation passes between operators, the node record, the
operator registrar, and the helpers the operators share (shapes, axes, pads)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

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


def registrar(table: dict[str, Op]) -> Callable[..., Callable[[Op], Op]]:
    """The decorator `op("Name", ...)` filing an operator function in `table` under each name."""

    def op(*names: str) -> Callable[[Op], Op]:
        def register(fn: Op) -> Op:
            for n in names:
                table[n] = fn
            return fn

        return register

    return op


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
