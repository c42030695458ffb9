"""gpu-tensorrt: a Triton model repository for NVIDIA GPUs.

With CUDA and TensorRT on the build host, a serialized TensorRT engine (`tensorrt_plan`) is built
through the TensorRT Python API and validated on it, ONNX Runtime's CUDA provider cross-checking.
An engine is tied to one GPU architecture and one TensorRT version, so without CUDA the portable
form ships instead: the ONNX model (FP16 / INT8 Q/DQ where asked) on Triton's ONNX Runtime backend
with the TensorRT execution accelerator configured, and Triton builds the engine on the server.
Then the exact shipped graph is checked on ONNX Runtime CPU, labelled as a proxy, and the report
says `not-validated` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import onnx

from packager.convert.ort_quant import quantize_static_qdq
from packager.convert.triton import (
    Accelerator,
    Tensor,
    TritonModel,
    serve_commands,
    write_repository,
)
from packager.core.errors import ConversionFailed, Unavailable, UserError
from packager.core.installed import missing
from packager.core.model import (
    DEFAULT_DOMAINS,
    ModelInfo,
    graph_inputs,
    is_qoperator,
    load_model,
    split_op,
)
from packager.core.schema import typed
from packager.core.target import (
    PRE_QUANTIZED,
    REEXPORT_QDQ,
    Availability,
    BuildContext,
    BuildOutput,
    Candidate,
    CrossCheck,
    Proxy,
    Status,
    Target,
)
from packager.targets.gpu_tensorrt.runtime import Gpu, cuda, cudart, current_gpu, dims

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


# --- conversion ------------------------------------------------------------------------------


def _elem_dtype(vi: onnx.ValueInfoProto) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name


def shipped_onnx(ctx: BuildContext, precision: str, dest: Path, cache_file: Path) -> None:
    """The ONNX graph this bundle ships (and the proxy runs): the source as it is (precision
    "fp32" or "source"), converted to FP16 with the source's input/output types kept, or INT8
    with explicit Q/DQ scales."""
    model = load_model(ctx.model_path)
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel

        # Same IO types as the source: clients and preprocess.json stay unchanged.
        converted = OnnxModel(convert_float_to_float16(model, keep_io_types=True))
        converted.topological_sort()  # the converter appends its IO casts at the end
        try:  # a graph the converter broke is this target's failure, not the runtime's later
            onnx.checker.check_model(converted.model, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            text = str(exc).strip()
            raise ConversionFailed(
                f"the FP16 conversion wrote an invalid ONNX graph: {text.splitlines()[0]}; "
                'set [targets.gpu-tensorrt] precision = "fp32"',
                log=text,
            ) from None
        onnx.save(converted.model, str(dest))
    elif precision == "int8":
        # INT8 the way TensorRT 10 wants it: explicit Q/DQ (its implicit calibrators are
        # deprecated), symmetric ranges; the logits stay in floating point.
        quantize_static_qdq(
            model,
            dest,
            ctx.calibration(),
            batch=16,
            symmetric=True,
            keep_head_float=True,
            cache_file=cache_file,
        )
    else:
        onnx.save(model, str(dest))


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
    def of(cls, ctx: BuildContext, opts: Options, onnx_path: Path) -> Io:
        shipped = onnx.load(str(onnx_path), load_external_data=False)
        p, info = ctx.preprocess, ctx.model
        dims = [p.channels, p.size, p.size] if p.layout == "NCHW" else [p.size, p.size, p.channels]
        batched = info.fixed_batch is None and len(info.output.shape) == 2
        preferred = opts.preferred if batched else []
        if batched:  # min 1, opt the largest preferred size, max max_batch_size
            sizes = {"min": 1, "opt": max(preferred), "max": opts.max_batch_size}
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
        self, name: str, opts: Options, platform: str, accelerators: list[Accelerator]
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
            max_batch_size=opts.max_batch_size if self.batched else 0,
            preferred_batch_sizes=self.preferred,
            max_queue_delay_us=opts.max_queue_delay_us,
            instance_kind="KIND_GPU",
            instance_count=opts.instances,
            warmup_batch_sizes=sorted({1, *self.preferred[-1:]}),
            gpu_accelerators=accelerators,
        )


def trt_accelerator(opts: Options, io: Io) -> Accelerator:
    """TensorRT inside Triton's ONNX Runtime backend: the server builds and caches the engine."""
    params = {
        "precision_mode": opts.precision.upper(),
        "max_workspace_size_bytes": str(opts.workspace_mb << 20),
        "trt_engine_cache_enable": "1",
    }
    if io.batched:  # one engine for every batch size instead of a rebuild per new shape
        for key, shape in io.profile.items():
            params[f"trt_profile_{key}_shapes"] = f"{io.input.name}:" + "x".join(map(str, shape))
    return Accelerator("tensorrt", params)


def build_engine(onnx_path: Path, plan: Path, io: Io, opts: Options) -> str:
    """Serialize a TensorRT engine for the GPU of this host; returns the TensorRT version."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse the model: {errors or 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mb << 20)
    if opts.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # INT8: layers without Q/DQ run in FP16
    if opts.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # scales come from the model's Q/DQ nodes
    if any(d < 0 for d in dims(network.get_input(0).shape)):  # static inputs take no profile
        shapes = builder.create_optimization_profile()
        min_, opt, max_ = (tuple(io.profile[k]) for k in ("min", "opt", "max"))
        # tuples convert to Dims at run time; tensorrt-stubs does not declare it
        shapes.set_shape(io.input.name, min_, opt, max_)  # type: ignore[arg-type]
        config.add_optimization_profile(shapes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(
            "TensorRT could not build an engine for this model (see its log above); "
            'ship the portable form with engine = "skip"'
        )
    plan.write_bytes(memoryview(serialized))
    return trt.__version__


# --- what the TensorRT ONNX parser takes ------------------------------------------------------


def _zero_points(model: onnx.ModelProto) -> list[np.ndarray | None]:
    """Each QuantizeLinear's zero point (None when it is computed in the graph)."""
    consts = {i.name: i for i in model.graph.initializer}
    consts |= {
        n.output[0]: n.attribute[0].t
        for n in model.graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"
    }
    out: list[np.ndarray | None] = []
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear":
            continue
        if len(n.input) < 3 or not n.input[2]:  # absent: uint8 zero
            out.append(np.zeros(1, np.uint8))
        else:
            t = consts.get(n.input[2])
            out.append(None if t is None else onnx.numpy_helper.to_array(t))
    return out


def parser_refusal(model: ModelInfo) -> str:
    """Why TensorRT's ONNX parser would refuse `model`, from its documented support matrix
    (onnx-tensorrt docs/operators.md): the default ONNX domain only (other domains need a
    TensorRT plugin), no QOperator-format operators (QLinearConv, QLinearMatMul, ...), and
    QuantizeLinear with a zero point of 0 (symmetric INT8). Empty: it takes the model."""
    foreign = [n for n in model.operators if split_op(n)[0] not in DEFAULT_DOMAINS]
    qop = [n for n in model.operators if is_qoperator(split_op(n)[1])]
    if foreign or qop:
        why = []
        if qop:
            why.append(
                "QOperator-format quantization (TensorRT builds INT8 from QuantizeLinear/"
                f"DequantizeLinear pairs): {REEXPORT_QDQ} with symmetric INT8 activations"
            )
        if [n for n in foreign if n not in qop]:
            why.append("operators outside the default ONNX domain need a TensorRT plugin")
        return (
            f"TensorRT's ONNX parser has no importer for {', '.join(sorted({*foreign, *qop}))}: "
            + "; ".join(why)
        )
    if model.quantization:
        zps = _zero_points(onnx.load(model.path, load_external_data=False))
        bad = [z for z in zps if z is not None and (z.dtype != np.int8 or np.any(z != 0))]
        if bad:
            types = sorted({str(z.dtype) for z in bad})
            return (
                f"TensorRT needs QuantizeLinear zero points of 0 in int8 (symmetric INT8); "
                f"{len(bad)} of {len(zps)} here are {'/'.join(types)} or non-zero: re-quantize "
                "with activation_type=QuantType.QInt8 and extra_options={'ActivationSymmetric': "
                "True, 'WeightSymmetric': True}"
            )
    return ""


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
        io = Io.of(ctx, opts, onnx_path)
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
                version = build_engine(onnx_path, plan, io, opts)
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
            triton = io.triton_model(name, opts, "tensorrt_plan", [])
            files = {"model.plan": plan}
        else:
            why = 'engine = "skip"' if opts.engine == "skip" else reason
            out.details |= {"form": "portable", "engine": None, "engine_reason": why}
            accelerator = trt_accelerator(opts, io)
            triton = io.triton_model(name, opts, "onnxruntime_onnx", [accelerator])
            files = {"model.onnx": onnx_path}
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
