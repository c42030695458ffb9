"""edge-ort at the hospital (or in a test harness for the phone build): model.ort on ONNX
Runtime's CPU provider, and model_image.ort, which takes encoded PNG/JPEG bytes. Shipped
verbatim; imports numpy, onnxruntime (through ort_session.py) and, for the image model,
onnxruntime-extensions and Pillow."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from ort_session import OrtSession, Unavailable

__all__ = ["Unavailable", "open_runtime", "encode_png"]


def encode_png(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return np.frombuffer(buf.getvalue(), np.uint8)


class ImageBytesSession(OrtSession):
    """Runs the image model the way an app does: each uint8 image is encoded as PNG and handed
    over as bytes; the graph decodes, resizes and normalizes it."""

    def load(self) -> None:
        try:
            from onnxruntime_extensions import get_library_path
        except ImportError:
            raise Unavailable(
                "the image model needs onnxruntime-extensions: pip install onnxruntime-extensions"
            ) from None
        self.custom_ops_libraries = [get_library_path()]
        super().load()

    def infer(self, x: np.ndarray) -> np.ndarray:
        run = self.session.run
        rows = [run(None, {self.input_name: encode_png(img)})[0] for img in x]
        return np.concatenate(rows).astype(np.float32)


def open_runtime(bundle: Path, options: dict[str, Any], kind: str = "main") -> OrtSession:
    common: dict[str, Any] = {
        "threads": options.get("threads", 0),
        "session_config": options.get("session_config") or {},
    }
    if kind == "image-bytes":
        return ImageBytesSession(bundle / options["image_model"], **common)
    return OrtSession(bundle / options["model"], **common)
