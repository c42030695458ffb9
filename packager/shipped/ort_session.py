"""One ONNX Runtime session behind the bundle runtime protocol (load / infer / close / info),
shared by every target whose artifact ONNX Runtime loads. Shipped verbatim as ort_session.py:
imports numpy and onnxruntime only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

LEVELS = {"none": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED"}


class Unavailable(RuntimeError):
    """This host cannot run the bundle as it was validated (runtime or provider missing)."""


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise Unavailable("onnxruntime is not installed; pip install -r requirements.txt") from None
    return onnxruntime


class OrtSession:
    """ONNX Runtime on the given providers. Inputs are bound without a copy and outputs land in a
    buffer kept per input shape (I/O binding): this call is every hospital's hot path."""

    def __init__(
        self,
        path: Path,
        providers: list[Any] | None = None,
        threads: int = 0,
        optimization: str = "all",
        session_config: dict[str, str] | None = None,
        custom_ops_libraries: list[str] | None = None,
        require_provider: bool = False,
    ) -> None:
        self.path = path
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = threads  # 0: ONNX Runtime's default (one per physical core)
        self.optimization = optimization
        self.session_config = session_config or {}
        self.custom_ops_libraries = custom_ops_libraries or []
        self.require_provider = require_provider  # refuse a silent fall-back to the CPU
        self.session: Any = None

    def load(self) -> None:
        ort = import_onnxruntime()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        level = LEVELS.get(self.optimization, "ORT_ENABLE_ALL")
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        for key, value in self.session_config.items():
            opts.add_session_config_entry(key, value)
        for lib in self.custom_ops_libraries:
            opts.register_custom_ops_library(lib)
        self.session = ort.InferenceSession(str(self.path), opts, providers=self.providers)
        wanted = self.providers[0][0] if isinstance(self.providers[0], tuple) else self.providers[0]
        if self.require_provider and wanted not in self.session.get_providers():
            raise Unavailable(
                f"ONNX Runtime has no {wanted} here (providers: {self.session.get_providers()}); "
                "install onnxruntime-gpu on a host with an NVIDIA GPU"
            )
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self.output_dtype = np.float16 if out.type == "tensor(float16)" else np.float32
        self.output_dims = out.shape[1:]
        self.binding = self.session.io_binding()
        self.outputs: dict[tuple[int, ...], np.ndarray] = {}

    def _output(self, batch: int) -> np.ndarray | None:
        """A preallocated output for this batch, where the output's other dimensions are known."""
        if not all(isinstance(d, int) for d in self.output_dims):
            return None
        shape = (batch, *self.output_dims)
        if shape not in self.outputs:
            self.outputs[shape] = np.empty(shape, self.output_dtype)
        return self.outputs[shape]

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, self.input_dtype)
        self.binding.bind_cpu_input(self.input_name, x)
        out = self._output(len(x))
        if out is None:
            self.binding.bind_output(self.output_name, "cpu")
        else:
            self.binding.bind_output(
                self.output_name, "cpu", 0, out.dtype, out.shape, out.ctypes.data
            )
        self.session.run_with_iobinding(self.binding)
        result = out if out is not None else self.binding.copy_outputs_to_cpu()[0]
        return np.array(result, np.float32)  # a copy: the buffer is reused by the next call

    def profile(self, x: np.ndarray, calls: int) -> dict[str, Any]:
        """ONNX Runtime's own profiler on a second session with this one's options: `calls`
        runs of `x`; per node, the kernel time it measured (us, summed over the calls), and its
        raw trace (Chrome trace events) for the bundle to carry."""
        import json
        import tempfile

        ort = import_onnxruntime()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, LEVELS.get(self.optimization, "ORT_ENABLE_ALL")
        )
        for key, value in self.session_config.items():
            opts.add_session_config_entry(key, value)
        for lib in self.custom_ops_libraries:
            opts.register_custom_ops_library(lib)
        with tempfile.TemporaryDirectory(prefix="ort-profile-") as tmp:
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tmp) / "profile")
            session = ort.InferenceSession(str(self.path), opts, providers=self.providers)
            feed = {self.input_name: np.ascontiguousarray(x, self.input_dtype)}
            for _ in range(calls):
                session.run(None, feed)
            trace = json.loads(Path(session.end_profiling()).read_text())
        nodes: dict[str, list[Any]] = {}
        for ev in trace:
            if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time"):
                name = ev["name"].removesuffix("_kernel_time")
                row = nodes.setdefault(name, [name, ev.get("args", {}).get("op_name", "?"), 0.0])
                row[2] += float(ev.get("dur", 0))
        return {"nodes": list(nodes.values()), "calls": calls, "raw": trace}

    def close(self) -> None:
        self.session = self.binding = None
        self.outputs = {}

    def __enter__(self) -> OrtSession:
        self.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def info(self) -> dict[str, Any]:
        ort = import_onnxruntime()
        providers = self.session.get_providers() if self.session else self.providers
        first = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        return {
            "runtime": "onnxruntime",
            "version": ort.__version__,
            "providers": [p[0] if isinstance(p, tuple) else p for p in providers],
            "device": "CPU" if first == "CPUExecutionProvider" else first,
            "threads": self.threads or "default",
        }
