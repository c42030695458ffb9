"""gpu-tensorrt: a Triton model repository for NVIDIA GPUs.

With CUDA and TensorRT on the build host, a serialized TensorRT engine (`tensorrt_plan`) is built
through the TensorRT Python API and validated on it, ONNX Runtime's CUDA provider cross-checking.
An engine is tied to one GPU architecture and one TensorRT version, so without CUDA the portable
form ships instead: the ONNX model (FP16 / INT8 Q/DQ where asked) on Triton's ONNX Runtime backend
with the TensorRT execution accelerator configured, and Triton builds the engine on the server.
Then the exact shipped graph is checked on ONNX Runtime CPU, labelled as a proxy, and the report
says `not-validated` with the reason.

The steps live beside this file: convert.py (the shipped ONNX graph, the engine, what the parser
takes) and serve.py (the Triton model and its TensorRT accelerator); runtime.py is what ships.
"""

from __future__ import annotations

from dataclasses import asdict, field, replace
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal

from packager.convert.triton import serve_commands, write_repository
from packager.core.errors import Unavailable, UserError
from packager.core.installed import missing
from packager.core.model import ModelInfo
from packager.core.schema import typed
from packager.core.target import (
    PRE_QUANTIZED,
    Availability,
    BuildContext,
    BuildOutput,
    Candidate,
    CrossCheck,
    Proxy,
    Status,
    Target,
)
from packager.targets.gpu_tensorrt.convert import build_engine, parser_refusal, shipped_onnx
from packager.targets.gpu_tensorrt.runtime import Gpu, cuda, cudart, current_gpu
from packager.targets.gpu_tensorrt.serve import Io, trt_accelerator

DEFAULT_PREFERRED = (8, 16, 32)


@typed
class Options:
    # auto: packager.builder.search tries every candidate, ships the best one passing every gate.
    precision: Literal["fp16", "fp32", "int8", "auto"] = "fp16"
    objective: Literal["latency", "throughput", "size"] = "latency"  # what auto optimizes
    max_batch_size: int = 64  # Triton's max_batch_size and the engine profile's max
    engine: Literal["auto", "require", "skip"] = "auto"  # auto: an engine where CUDA exists
    preferred_batch_sizes: list[int] = field(default_factory=list)  # []: 8, 16, 32 up to max
    max_queue_delay_us: int = 100  # how long Triton waits to fill a preferred batch
    instances: int = 1  # model instances per GPU
    workspace_mb: int = 1024  # TensorRT builder workspace

    def check(self, where: str) -> None:
        if not 1 <= self.max_batch_size <= 4096:
            raise UserError(f"{where}.max_batch_size = {self.max_batch_size}; use 1..4096")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise UserError(
                f"{where}.preferred_batch_sizes {bad} must lie in 1..max_batch_size "
                f"({self.max_batch_size})"
            )
        if self.max_queue_delay_us < 0 or self.instances < 1 or self.workspace_mb < 16:
            raise UserError(
                f"[{where}] needs max_queue_delay_us >= 0, instances >= 1 and workspace_mb >= 16"
            )

    @property
    def preferred(self) -> list[int]:
        sizes = self.preferred_batch_sizes or [
            b for b in DEFAULT_PREFERRED if b <= self.max_batch_size
        ]
        return sorted(set(sizes)) or [self.max_batch_size]


# --- the host: an NVIDIA GPU through CUDA, and TensorRT -------------------------------------


@cache
def cuda_host() -> tuple[Gpu | None, str]:
    """The GPU TensorRT would use here, or None and why not."""
    why = missing({"tensorrt": "tensorrt", "cuda": "cuda-python"}, "gpu")
    if why:
        gpu = "an NVIDIA GPU is visible" if Path("/dev/nvidia0").exists() else "no NVIDIA GPU"
        return None, f"no CUDA/TensorRT here ({gpu}; {why} on a host with an NVIDIA GPU)"
    try:
        count = cuda(cudart().cudaGetDeviceCount())
        if count < 1:
            return None, "no CUDA device found (cudaGetDeviceCount = 0)"
        return current_gpu(), ""
    except RuntimeError as exc:  # no driver, or a driver too old for this CUDA runtime
        return None, f"CUDA is installed but not usable: {exc}"


# --- the target ------------------------------------------------------------------------------


class GpuTensorRT(Target):
    name = "gpu-tensorrt"
    summary = "TensorRT on NVIDIA GPUs, served by Triton (engine, or ONNX + TensorRT accelerator)"
    limitations = (
        "other GPUs: a TensorRT engine is validated on the GPU and TensorRT version that built it "
        "only; the portable form's engine is built by Triton on the serving GPU, unvalidated",
    )
    Options = Options
    int8_option = ("precision", "int8")
    shipped = ("ort_session.py",)

    def availability(self) -> Availability:
        gpu, reason = cuda_host()
        runs = Status(True) if gpu else Status(False, reason)
        # The portable repository needs no GPU to build: Triton makes the engine on the server.
        return Availability(build=Status(True), validate=runs, bench=runs)

    def accepts(self, model: ModelInfo, options: Any = None) -> Status:
        status = super().accepts(model, options)
        if not status.ok:
            return status
        refusal = parser_refusal(model)
        return Status(False, refusal) if refusal else Status(True)

    # ---- precision search (packager.builder.search) -----------------------------------------------

    search_option: ClassVar[str | None] = "precision"

    def search_space(self, options: Any) -> list[Candidate]:
        """fp16 and fp32 everywhere (validated on the labelled proxy without CUDA); int8 only
        where an engine is built and calibrated on a GPU."""
        gpu, reason = cuda_host()
        no_int8 = (
            "" if gpu else f"not a candidate: INT8 needs a TensorRT engine built here ({reason})"
        )
        return [
            Candidate("fp16", {"precision": "fp16"}),
            Candidate("fp32", {"precision": "fp32"}),
            Candidate("int8", {"precision": "int8"}, no_int8),
        ]

    def build(self, ctx: BuildContext, stage: Path) -> BuildOutput:
        opts: Options = ctx.options
        prequantized = ctx.model.quantization is not None
        if prequantized:  # its own Q/DQ scales: shipped as it is, the engine is INT8 from them
            opts = replace(opts, precision="int8")
        gpu, reason = cuda_host()
        if opts.engine == "require" and gpu is None:
            raise Unavailable(
                f'gpu-tensorrt: engine = "require" but {reason}; use engine = "auto" to ship '
                "the portable form"
            )
        name = ctx.model_config.name
        vdir = stage / "triton" / name / "1"
        vdir.mkdir(parents=True)
        # With an engine, the ONNX it came from stays beside the repository (to rebuild it for
        # another GPU); the portable form serves the ONNX itself.
        onnx_path = stage / "model.onnx" if gpu and opts.engine != "skip" else vdir / "model.onnx"
        cache_file = stage / "calibration.json"
        with ctx.progress.step(self.name, f"writing the {opts.precision.upper()} ONNX model"):
            shipped_onnx(ctx, "source" if prequantized else opts.precision, onnx_path, cache_file)
        io = Io.of(ctx, onnx_path, opts.preferred, opts.max_batch_size)
        out = BuildOutput(
            precision=PRE_QUANTIZED if prequantized else opts.precision,
            runtime_config={
                "model": onnx_path.relative_to(stage).as_posix(),
                "precision": opts.precision,
            },
            details={"precision": opts.precision, "profile": io.profile},
        )
        if prequantized:
            out.notes.append(
                "the model came quantized (QDQ): it ships as it is and TensorRT builds INT8 "
                "layers from its own Q/DQ scales (no calibration here)"
            )
        if io.fixed:
            out.notes.append(
                f"the model has a fixed batch of {io.fixed}: Triton gets max_batch_size 0 and no "
                "dynamic batching (export with a dynamic batch axis to batch requests)"
            )
        if gpu and opts.engine != "skip":
            plan = vdir / "model.plan"
            with ctx.progress.step(self.name, f"building a TensorRT engine on {gpu.name}"):
                version = build_engine(onnx_path, plan, io, opts.precision, opts.workspace_mb)
            built_for = {
                "gpu": gpu.name,
                "compute_capability": gpu.compute_capability,
                "memory_mb": gpu.memory_mb,
                "tensorrt": version,
            }
            out.runtime_config |= {
                "plan": plan.relative_to(stage).as_posix(),
                "built_for": built_for,
            }
            out.details |= {"form": "engine", "engine": built_for}
            out.notes.append(
                f"the engine runs only on GPUs of compute capability {gpu.compute_capability} "
                f"with TensorRT {version}; model.onnx is kept to rebuild it elsewhere"
            )
            platform, accelerators, files = "tensorrt_plan", [], {"model.plan": plan}
        else:
            why = 'engine = "skip"' if opts.engine == "skip" else reason
            out.details |= {"form": "portable", "engine": None, "engine_reason": why}
            accelerator = trt_accelerator(io, opts.precision, opts.workspace_mb)
            platform, accelerators = "onnxruntime_onnx", [accelerator]
            files = {"model.onnx": onnx_path}
        triton = io.triton_model(
            name,
            platform,
            accelerators,
            opts.max_batch_size,
            opts.max_queue_delay_us,
            opts.instances,
        )
        write_repository(stage / "triton", triton, files)
        out.details["triton"] = {
            "repository": "triton",
            "platform": triton.platform,
            "max_batch_size": triton.max_batch_size,
            "preferred_batch_sizes": triton.preferred_batch_sizes,
            "max_queue_delay_us": triton.max_queue_delay_us,
            "commands": serve_commands(triton),
        }
        if cache_file.exists():
            split = ctx.data.calibration_split
            out.details["calibration"] = {"split": split, "cache": cache_file.name}
        out.artifacts = [p.relative_to(stage).as_posix() for p in sorted(vdir.iterdir())]
        return out

    def conversion_host(self, options: Any) -> dict[str, Any]:
        """The GPU an engine is built for (TensorRT's own version is in every key); none for
        the portable form, which no GPU changes (engine = "skip")."""
        gpu = cuda_host()[0] if options.engine != "skip" else None
        return {"gpu": asdict(gpu) if gpu else None}

    def requirements(self, options: dict[str, Any]) -> list[str]:
        return ["tensorrt", "cuda-python"] if options.get("plan") else ["onnxruntime-gpu"]

    def proxy(self, options: dict[str, Any]) -> Proxy | None:
        return Proxy(
            "proxy",
            f"ONNX Runtime CPU running the shipped {options['precision'].upper()} ONNX graph "
            "(not TensorRT, not a GPU)",
        )

    def cross_checks(self, options: dict[str, Any]) -> list[CrossCheck]:
        """With CUDA: ONNX Runtime's CUDA provider on the same ONNX must agree with TensorRT
        (within 1% of the decisions)."""
        if cuda_host()[0] is None:  # validated on the CPU proxy: there is no TensorRT to check
            return []
        return [
            CrossCheck(
                "decisions differing from ONNX Runtime CUDA",
                "ort-cuda",
                max_flip_rate=0.01,
                available=_ort_cuda,
            )
        ]


def _ort_cuda() -> Status:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return Status(True)
    return Status(False, "onnxruntime-gpu is not installed")
