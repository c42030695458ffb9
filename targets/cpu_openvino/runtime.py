"""cpu-openvino at the hospital: the OpenVINO IR on the CPU plugin, compiled at the inference
precision this bundle was validated at. Shipped verbatim; imports numpy and openvino only.

The precision is always set, then read back: OpenVINO's own default depends on the CPU (bf16
where it has native bfloat16), and a bundle never runs at a precision it was not validated at.
Synchronous calls (latency mode) run one request on a model compiled with the LATENCY hint;
`throughput()` keeps OpenVINO's optimal number of requests in flight on a THROUGHPUT-compiled
model (hint "both"), or on the one model for "latency" / "throughput"."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


class Unavailable(RuntimeError):
    """This host cannot run the bundle as validated (no OpenVINO, or not at the pinned precision)."""


def _openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise Unavailable("openvino is not installed; pip install -r requirements.txt") from None
    return openvino


class OpenVinoRuntime:
    def __init__(self, path: Path, precision: str, hint: str = "both", threads: int = 0) -> None:
        if hint not in ("both", "latency", "throughput"):
            raise ValueError(f"hint must be both, latency or throughput, not {hint!r}")
        self.path, self.precision, self.hint, self.threads = path, precision, hint, threads
        self.async_model: Any = None
        self.request: Any = None
        self.input: np.ndarray | None = None

    def _compile(self, mode: str) -> Any:
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": self.precision,
            "PERFORMANCE_HINT": mode.upper(),
        }
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        compiled = self.core.compile_model(self.model, "CPU", config)
        applied = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if applied != self.precision:
            raise Unavailable(
                f"OpenVINO compiled {self.path.name} for {applied}, not the pinned "
                f"{self.precision}; this CPU cannot run the precision the bundle was validated at"
            )
        return compiled

    def load(self) -> None:
        ov = self.ov = _openvino()
        self.core = ov.Core()
        self.model = self.core.read_model(self.path)
        self.compiled = self._compile("throughput" if self.hint == "throughput" else "latency")
        self.request = self.compiled.create_infer_request()
        self.dtype = self.compiled.input(0).get_element_type().to_dtype()

    def infer(self, x: np.ndarray) -> np.ndarray:
        # The request keeps one input tensor per shape, bound once, as benchmark_app does; the
        # output is read in place. Measured on ResNet-18 at batch 1 (wall / OpenVINO's timer):
        # this 1.031, `infer({0: x}, share_inputs=True, share_outputs=True)` 1.064 — its
        # per-call dispatch costs more than copying a 48 KB input.
        if self.input is None or self.input.shape != x.shape:
            self.input = np.empty(x.shape, self.dtype)
            self.request.set_input_tensor(self.ov.Tensor(self.input, shared_memory=True))
        np.copyto(self.input, x)
        self.request.infer()
        return np.array(self.request.get_output_tensor(0).data, np.float32)

    def runtime_latency_s(self) -> float:
        return self.request.latency / 1e3  # ms, timed inside OpenVINO around the C++ call

    def _queue_model(self) -> Any:
        if self.hint != "both":
            return self.compiled
        if self.async_model is None:
            self.async_model = self._compile("throughput")
        return self.async_model

    def throughput(self, x: np.ndarray, seconds: float, min_iterations: int) -> tuple[int, float]:
        ov = _openvino()
        compiled = self._queue_model()
        queue = ov.AsyncInferQueue(
            compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        )
        data = np.ascontiguousarray(x, self.dtype)
        for request in queue:  # inputs set once, as benchmark_app does
            request.set_input_tensor(ov.Tensor(data))
        for _ in range(len(queue)):  # warm every request
            queue.start_async()
        queue.wait_all()
        started, start = 0, time.perf_counter()
        while started < min_iterations or time.perf_counter() - start < seconds:
            queue.start_async()  # blocks until a request is idle
            started += 1
        queue.wait_all()
        return started * len(x), time.perf_counter() - start

    def profile(self, x: np.ndarray, calls: int) -> dict[str, Any]:
        """OpenVINO's performance counters (PERF_COUNT, as benchmark_app -pc) on a second
        compilation at the pinned precision: `calls` runs of `x`; per executed node, its real
        time (us, summed over the calls) and layer type, plus the counters of the last call."""
        config = {
            "INFERENCE_PRECISION_HINT": self.precision,
            "PERFORMANCE_HINT": "LATENCY",
            "PERF_COUNT": True,
        }
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        request = self.core.compile_model(self.model, "CPU", config).create_infer_request()
        data = np.ascontiguousarray(x, self.dtype)
        nodes: dict[str, list[Any]] = {}
        raw: list[dict[str, Any]] = []
        for _ in range(calls):
            request.infer({0: data})
            raw = []
            for info in request.get_profiling_info():
                us = info.real_time.total_seconds() * 1e6
                raw.append(
                    {
                        "node_name": info.node_name,
                        "node_type": info.node_type,
                        "exec_type": info.exec_type,
                        "status": str(info.status),
                        "real_time_us": us,
                        "cpu_time_us": info.cpu_time.total_seconds() * 1e6,
                    }
                )
                row = nodes.setdefault(info.node_name, [info.node_name, info.node_type, 0.0])
                row[2] += us
        return {"nodes": list(nodes.values()), "calls": calls, "raw": raw}

    def close(self) -> None:
        self.request = self.compiled = self.async_model = self.model = self.core = None
        self.input = None

    def info(self) -> dict[str, Any]:
        ov = _openvino()
        out: dict[str, Any] = {
            "runtime": "openvino",
            "version": ov.get_version(),
            "device": "CPU",
            "pinned_precision": self.precision,
            "hint": self.hint,
            "threads": self.threads or "default",
        }
        if self.request is not None:
            out["latency_mode"] = compiled_facts(self.compiled)
            if self.async_model is not None:
                out["throughput_mode"] = compiled_facts(self.async_model)
        return out


def compiled_facts(compiled: Any) -> dict[str, Any]:
    """What OpenVINO actually compiled: precision, hint, streams, requests, and the precision
    each compute layer runs at (from the runtime graph)."""
    hint = compiled.get_property("PERFORMANCE_HINT")
    runtime: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        layer = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        if layer in ("Convolution", "FullyConnected", "MatMul", "Deconvolution"):
            prec = rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else "?"
            key = f"{layer}:{prec}"
            runtime[key] = runtime.get(key, 0) + 1
    return {
        "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
        "performance_hint": getattr(hint, "name", str(hint)),
        "streams": int(compiled.get_property("NUM_STREAMS")),
        "optimal_requests": int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")),
        "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
        "layer_precisions": dict(sorted(runtime.items())),
    }


def open_runtime(bundle: Path, options: dict[str, Any], kind: str = "main") -> OpenVinoRuntime:
    return OpenVinoRuntime(
        bundle / options["model"],
        precision=options["inference_precision"],
        hint=options.get("hint", "both"),
        threads=options.get("threads", 0),
    )
