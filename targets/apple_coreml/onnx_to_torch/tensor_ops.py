"""The translation's data-movement operators: identity, constants and casts, reshapes and
transposes, shape arithmetic (Shape, Gather, Concat, (Un)Squeeze), Pad, Slice and Resize."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
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
    pads_pairs,
    registrar,
    tensor,
    torch_pad,
)

OPS: dict[str, Op] = {}
op = registrar(OPS)


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
