"""cpu-onnxruntime: the source model on ONNX Runtime's CPU provider, FP32 — the reference
every other target's sensitivity drop is measured against."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

from packager.convert.ort_support import ort_accepts
from packager.core.model import ModelInfo
from packager.core.schema import Threads, typed
from packager.core.target import (
    PRE_QUANTIZED,
    Availability,
    BuildContext,
    BuildOutput,
    Status,
    Target,
)


@typed
class Options:
    threads: Threads = 0  # 0: ONNX Runtime's default
    optimization: Literal["none", "basic", "extended", "all"] = "all"


class CpuOnnxRuntime(Target):
    name = "cpu-onnxruntime"
    summary = "Source ONNX model on ONNX Runtime CPU, FP32 (the reference)"
    Options = Options
    shipped = ("ort_session.py",)
    is_reference = True

    def source_options(self, model: Path) -> dict[str, Any]:
        return {"model": model.name}

    def availability(self) -> Availability:
        ok = Status(True)
        return Availability(build=ok, validate=ok, bench=ok)

    def accepts(self, model: ModelInfo, options: Any = None) -> Status:
        # QOperator and QDQ models both run: the CPU provider has the QLinear* and contrib kernels.
        status = super().accepts(model, options)
        return ort_accepts(model, "ONNX Runtime's CPU provider") if status.ok else status

    def requirements(self, options: dict[str, Any]) -> list[str]:
        return ["onnxruntime"]

    def build(self, ctx: BuildContext, stage: Path) -> BuildOutput:
        shutil.copyfile(ctx.model_path, stage / "model.onnx")
        for rel in ctx.model.external_data:  # external weights travel with the model
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ctx.model_path.parent / rel, stage / rel)
        opts = ctx.options
        return BuildOutput(
            precision=PRE_QUANTIZED if ctx.model.quantization else "fp32",
            runtime_config={
                "model": "model.onnx",
                "threads": opts.threads,
                "optimization": opts.optimization,
            },
        )
