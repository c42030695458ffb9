"""ONNX Runtime runner, shared by every target whose artifact ONNX Runtime loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from packager.runner import Runner


class OrtRunner(Runner):
    def __init__(
        self,
        path: Path,
        providers: list[str] | None = None,
        threads: int = 0,
        optimization: str = "all",
        session_config: dict[str, str] | None = None,
        custom_ops_libraries: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.path = path
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = threads  # 0: ONNX Runtime's default (one per physical core)
        self.optimization = optimization
        self.session_config = session_config or {}  # SessionOptions config entries
        self.custom_ops_libraries = custom_ops_libraries or []  # e.g. onnxruntime-extensions

    def _load(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        for key, value in self.session_config.items():
            opts.add_session_config_entry(key, value)
        for lib in self.custom_ops_libraries:
            opts.register_custom_ops_library(lib)
        self.session = ort.InferenceSession(str(self.path), opts, providers=self.providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def _infer(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: x.astype(self.input_dtype, copy=False)})[0]
        return out.astype(np.float32, copy=False)

    def _close(self) -> None:
        del self.session

    def info(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "runtime": "onnxruntime",
            "version": ort.__version__,
            "providers": self.session.get_providers() if self.loaded else self.providers,
            "threads": self.threads or "default",
        }
