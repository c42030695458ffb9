"""ONNX export of the example model: FP32 and FP16, dynamic batch, `input` -> `output`, opset 17."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper

OPSET = 17
INPUT, OUTPUT = "input", "output"


def export_fp32(model: torch.nn.Module, path: Path, size: int, channels: int) -> Path:
    """The TorchScript exporter: it folds BatchNorm into the convolutions and, unlike the
    torch.export one, needs no onnxscript."""
    m = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format).eval()
    dummy = torch.zeros(2, channels, size, size)
    with warnings.catch_warnings():
        # The TorchScript exporter announces its own deprecation; the export itself is sound.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            m,
            (dummy,),
            str(path),
            dynamo=False,
            input_names=[INPUT],
            output_names=[OUTPUT],
            opset_version=OPSET,
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            do_constant_folding=True,
        )
    proto = onnx.load(str(path))
    proto.producer_name = "packager-example"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return path


def to_fp16(src: Path, dest: Path) -> Path:
    """FP16 copy of an FP32 graph: weights (already BN-folded in FP32) rounded once, FP16 IO.
    Refuses graphs holding FP32 constants it would have to guess about."""
    proto = onnx.load(str(src))
    g = proto.graph
    for node in g.node:
        if node.op_type == "Constant" and any(
            a.t.data_type == TensorProto.FLOAT for a in node.attribute
        ):
            raise ValueError(f"{src}: float Constant node {node.name} is not converted")
        if node.op_type == "Cast":
            raise ValueError(f"{src}: Cast node {node.name} is not converted")
    for i, init in enumerate(g.initializer):
        if init.data_type == TensorProto.FLOAT:
            arr = numpy_helper.to_array(init)
            if np.abs(arr).max(initial=0.0) > np.finfo(np.float16).max:
                raise ValueError(f"{src}: weight {init.name} overflows FP16")
            g.initializer[i].CopyFrom(numpy_helper.from_array(arr.astype(np.float16), init.name))
    for vi in [*g.input, *g.output]:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    del g.value_info[:]
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(dest))
    return dest
