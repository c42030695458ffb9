"""ONNX -> torch.nn.Module for the operators CNN classifiers use (apple-coreml only).

Core ML's converter no longer reads ONNX (coremltools 6 dropped it), so the apple-coreml target
goes ONNX -> PyTorch -> torch.export -> Core ML. Why not onnx2torch: it needs a torchvision that
does not install beside the pinned torch here, its last release is from 2024, and it does not
refuse unknown operators by name. This translation covers the classifier families and refuses
anything else, naming the operators. The module interprets the graph node by node;
`torch.export` records it as a static graph (the batch stays symbolic where the export asks).

Floats are computed in FP32 whatever the source's float type (casts to FP16 keep their rounding):
the Core ML conversion decides the deployed precision, and PyTorch's CPU kernels are FP32 kernels.

The operators live beside this file: layer_ops.py (arithmetic and layers) and tensor_ops.py (data
movement), on the values and helpers of values.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from packager.core.errors import ModelRefused
from packager.core.model import DEFAULT_DOMAINS, opset_of, qualified, split_op
from packager.targets.apple_coreml.onnx_to_torch import layer_ops, tensor_ops
from packager.targets.apple_coreml.onnx_to_torch.values import Node, Op, Value, tensor

OPS: dict[str, Op] = {**tensor_ops.OPS, **layer_ops.OPS}


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


# --- the module -----------------------------------------------------------------------------

# Inputs read as Python numbers at conversion time (the ops call np.asarray on them).
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
