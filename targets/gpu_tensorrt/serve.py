"""gpu-tensorrt's Triton side: the shipped graph's input and output as Triton and the engine
profile see them, the model's config, and the TensorRT accelerator of Triton's ONNX Runtime
backend (the portable form)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from packager.convert.triton import Accelerator, Tensor, TritonModel
from packager.core.model import graph_inputs
from packager.core.target import BuildContext


def _elem_dtype(vi: onnx.ValueInfoProto) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name


@dataclass
class Io:
    """Input/output of the shipped graph as Triton and the engine profile see them."""

    input: onnx.ValueInfoProto
    output: onnx.ValueInfoProto
    dims: list[int]  # one sample's input, concrete (the size packager validated with)
    fixed: int | None  # the model's own fixed batch
    batched: bool  # Triton may batch: a free batch axis on input and output
    preferred: list[int]
    profile: dict[str, list[int]]  # engine optimization profile: min, opt, max input shapes
    classes: int

    @classmethod
    def of(
        cls, ctx: BuildContext, onnx_path: Path, preferred: list[int], max_batch_size: int
    ) -> Io:
        shipped = onnx.load(str(onnx_path), load_external_data=False)
        p, info = ctx.preprocess, ctx.model
        dims = [p.channels, *p.hw] if p.layout == "NCHW" else [*p.hw, p.channels]
        batched = info.fixed_batch is None and len(info.output.shape) == 2
        preferred = preferred if batched else []
        if batched:  # min 1, opt the largest preferred size, max max_batch_size
            sizes = {"min": 1, "opt": max(preferred), "max": max_batch_size}
        else:
            sizes = dict.fromkeys(("min", "opt", "max"), info.fixed_batch or 1)
        return cls(
            input=graph_inputs(shipped)[0],
            output=shipped.graph.output[0],
            dims=dims,
            fixed=info.fixed_batch,
            batched=batched,
            preferred=preferred,
            profile={k: [b, *dims] for k, b in sizes.items()},
            classes=info.num_classes or -1,
        )

    def triton_model(
        self,
        name: str,
        platform: str,
        accelerators: list[Accelerator],
        max_batch_size: int,
        max_queue_delay_us: int,
        instances: int,
    ) -> TritonModel:
        in_type, out_type = _elem_dtype(self.input), _elem_dtype(self.output)
        if self.batched:
            inputs = [Tensor(self.input.name, in_type, self.dims)]
            outputs = [Tensor(self.output.name, out_type, [self.classes])]
        else:
            batch = self.profile["max"][0]
            rank = len(self.output.type.tensor_type.shape.dim)
            inputs = [Tensor(self.input.name, in_type, self.profile["max"])]
            outputs = [Tensor(self.output.name, out_type, [batch, self.classes][-rank:])]
        return TritonModel(
            name=name,
            inputs=inputs,
            outputs=outputs,
            platform=platform,
            max_batch_size=max_batch_size if self.batched else 0,
            preferred_batch_sizes=self.preferred,
            max_queue_delay_us=max_queue_delay_us,
            instance_kind="KIND_GPU",
            instance_count=instances,
            warmup_batch_sizes=sorted({1, *self.preferred[-1:]}),
            gpu_accelerators=accelerators,
        )


def trt_accelerator(io: Io, precision: str, workspace_mb: int) -> Accelerator:
    """TensorRT inside Triton's ONNX Runtime backend: the server builds and caches the engine."""
    params = {
        "precision_mode": precision.upper(),
        "max_workspace_size_bytes": str(workspace_mb << 20),
        "trt_engine_cache_enable": "1",
    }
    if io.batched:  # one engine for every batch size instead of a rebuild per new shape
        for key, shape in io.profile.items():
            params[f"trt_profile_{key}_shapes"] = f"{io.input.name}:" + "x".join(map(str, shape))
    return Accelerator("tensorrt", params)
