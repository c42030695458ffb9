"""cpu-onnxruntime at the hospital: the source ONNX model on ONNX Runtime's CPU provider, FP32.
Shipped verbatim; imports numpy and onnxruntime only (through ort_session.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ort_session import OrtSession, Unavailable

__all__ = ["Unavailable", "open_runtime"]


def open_runtime(bundle: Path, options: dict[str, Any], kind: str = "main") -> OrtSession:
    return OrtSession(
        bundle / options["model"],
        threads=options.get("threads", 0),
        optimization=options.get("optimization", "all"),
    )
