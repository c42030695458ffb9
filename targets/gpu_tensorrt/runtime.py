"""gpu-tensorrt at the hospital: the TensorRT engine on this GPU (refused on another GPU
architecture or TensorRT version), or the portable ONNX on ONNX Runtime with the TensorRT and CUDA
providers, as Triton's ONNX Runtime backend runs it. Shipped verbatim; imports numpy, tensorrt and
cuda-python, or onnxruntime (through ort_session.py).

Kinds: "main" (what the bundle ships), "ort-cuda" (ONNX Runtime's CUDA provider on the same
graph, a cross-check) and "proxy" (the shipped graph on ONNX Runtime CPU, where no GPU is)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ort_session import OrtSession, Unavailable

__all__ = ["Unavailable", "open_runtime", "Gpu", "current_gpu", "cuda"]


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: str  # "8.9"
    memory_mb: int


def cudart() -> Any:
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as runtime  # older cuda-python
        except ImportError:
            raise Unavailable(
                "cuda-python is not installed; pip install -r requirements.txt"
            ) from None
    return runtime


def cuda(result: tuple) -> Any:
    """cuda-python returns (error, *values); raise on an error, unwrap one value."""
    err, *values = result
    if int(err) != 0:
        raise RuntimeError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else tuple(values)


def current_gpu() -> Gpu:
    rt = cudart()
    prop = cuda(rt.cudaGetDeviceProperties(cuda(rt.cudaGetDevice())))
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return Gpu(name.rstrip("\0"), f"{prop.major}.{prop.minor}", prop.totalGlobalMem // 2**20)


def _require_tensorrt() -> None:
    """Callers then `import tensorrt as trt` themselves, so mypy checks their calls against
    tensorrt-stubs (a module returned as Any would check nothing)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        raise Unavailable("tensorrt is not installed; pip install -r requirements.txt") from None


def dims(shape: Any) -> tuple[int, ...]:
    """A TensorRT Dims as a tuple: Dims iterate at run time, but tensorrt-stubs does not say so."""
    return tuple(shape)


class TensorRTEngine:
    """A serialized engine on this host's GPU; refuses an engine built for another GPU
    architecture or TensorRT version instead of failing obscurely."""

    def __init__(self, plan: Path, built_for: dict[str, Any]) -> None:
        self.plan = plan
        self.built_for = built_for
        self.context: Any = None

    def _check_host(self) -> Gpu:
        _require_tensorrt()
        import tensorrt as trt

        gpu = current_gpu()
        want = self.built_for
        if gpu.compute_capability != want["compute_capability"]:
            raise Unavailable(
                f"this engine was built for {want['gpu']} (compute capability "
                f"{want['compute_capability']}) but this GPU is {gpu.name} (compute capability "
                f"{gpu.compute_capability}); rebuild the bundle on a matching GPU or ship the "
                'portable form (engine = "skip")'
            )
        if trt.__version__ != want["tensorrt"]:
            raise Unavailable(
                f"this engine was built with TensorRT {want['tensorrt']} but TensorRT "
                f"{trt.__version__} is installed; install that version or rebuild the bundle"
            )
        return gpu

    def load(self) -> None:
        _require_tensorrt()
        import tensorrt as trt

        rt = cudart()
        self.gpu = self._check_host()
        free_before, _ = cuda(rt.cudaMemGetInfo())
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {self.plan}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = self.engine.get_tensor_mode
        self.inp = next(n for n in names if mode(n) == trt.TensorIOMode.INPUT)
        self.out = next(n for n in names if mode(n) == trt.TensorIOMode.OUTPUT)
        self.in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.inp)))
        self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.out)))
        max_shape = dims(self.engine.get_tensor_shape(self.inp))
        if min(max_shape) < 0:  # dynamic batch: the profile's max
            max_shape = dims(self.engine.get_tensor_profile_shape(self.inp, 0)[2])
        self.max_batch = max_shape[0]
        self.context.set_input_shape(self.inp, max_shape)
        out_shape = tuple(self.context.get_tensor_shape(self.out))
        self.d_in = cuda(rt.cudaMalloc(math.prod(max_shape) * self.in_dtype.itemsize))
        self.d_out = cuda(rt.cudaMalloc(math.prod(out_shape) * self.out_dtype.itemsize))
        self.context.set_tensor_address(self.inp, int(self.d_in))
        self.context.set_tensor_address(self.out, int(self.d_out))
        self.stream = cuda(rt.cudaStreamCreate())
        free_after, _ = cuda(rt.cudaMemGetInfo())
        self.gpu_memory_mb = max(0, free_before - free_after) / 2**20

    def _run(self, x: np.ndarray) -> np.ndarray:
        rt = cudart()
        kind = rt.cudaMemcpyKind
        x = np.ascontiguousarray(x, dtype=self.in_dtype)
        self.context.set_input_shape(self.inp, x.shape)
        out = np.empty(tuple(self.context.get_tensor_shape(self.out)), self.out_dtype)
        cuda(rt.cudaMemcpyAsync(self.d_in, x, x.nbytes, kind.cudaMemcpyHostToDevice, self.stream))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        cuda(
            rt.cudaMemcpyAsync(
                out, self.d_out, out.nbytes, kind.cudaMemcpyDeviceToHost, self.stream
            )
        )
        cuda(rt.cudaStreamSynchronize(self.stream))
        return out

    def infer(self, x: np.ndarray) -> np.ndarray:
        chunks = [self._run(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def close(self) -> None:
        if self.context is None:
            return
        rt = cudart()
        del self.context, self.engine, self.runtime  # before the memory they point at
        self.context = None
        cuda(rt.cudaFree(self.d_in))
        cuda(rt.cudaFree(self.d_out))
        cuda(rt.cudaStreamDestroy(self.stream))

    def info(self) -> dict[str, Any]:
        _require_tensorrt()
        import tensorrt as trt

        facts: dict[str, Any] = {"runtime": "tensorrt", "version": trt.__version__, "device": "GPU"}
        if self.context is not None:
            facts |= {
                "device": f"GPU {self.gpu.name}",
                "gpu": self.gpu.name,
                "compute_capability": self.gpu.compute_capability,
                "gpu_memory_mb": round(self.gpu_memory_mb, 1),
            }
        return facts


def open_runtime(
    bundle: Path, options: dict[str, Any], kind: str = "main"
) -> OrtSession | TensorRTEngine:
    model = bundle / options["model"]
    if kind == "proxy":
        return OrtSession(model)
    if kind == "ort-cuda":
        return OrtSession(model, providers=["CUDAExecutionProvider"], require_provider=True)
    if options.get("plan"):
        return TensorRTEngine(bundle / options["plan"], options["built_for"])
    # The portable form on a GPU host: what Triton's ONNX Runtime backend will do.
    trt_opts = {
        "trt_fp16_enable": options["precision"] != "fp32",
        "trt_int8_enable": options["precision"] == "int8",
    }
    return OrtSession(
        model,
        providers=[("TensorrtExecutionProvider", trt_opts), "CUDAExecutionProvider"],
        require_provider=True,
    )
