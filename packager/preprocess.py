"""The one preprocessing implementation: validation, calibration and every bundle's predict.py.

Standalone on purpose (numpy and Pillow only): bundles ship this file verbatim next to
preprocess.json, so a hospital runs exactly the code the bundle was validated with.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

_DTYPES = {"float32": np.float32, "float16": np.float16}
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}


@dataclass(frozen=True)
class Preprocess:
    size: int
    channels: int
    layout: str  # "NCHW" | "NHWC"
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dtype: str  # the model input's dtype: "float32" | "float16"
    resize: str = "bilinear"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, H, W) or (N, H, W, C) -> the model's input tensor."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise ValueError(f"images must be (N, H, W[, 1|3|4]), got {images.shape}")
        images = images[..., :3].astype(np.float32)
        if images.shape[-1] == 3 and self.channels == 1:
            images = images @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
        elif images.shape[-1] == 1 and self.channels == 3:
            images = np.repeat(images, 3, axis=-1)
        if images.shape[1:3] != (self.size, self.size):
            images = np.stack([self._resize(img) for img in images])
        x = images * np.float32(self.scale)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x.astype(_DTYPES[self.dtype]))

    def _resize(self, img: np.ndarray) -> np.ndarray:
        # Float ("F") mode per channel keeps resize exact regardless of the uint8 source.
        out = [
            np.asarray(
                Image.fromarray(img[..., c], mode="F").resize(
                    (self.size, self.size), _RESAMPLE[self.resize]
                )
            )
            for c in range(img.shape[-1])
        ]
        return np.stack(out, axis=-1)

    def input_shape(self, batch: int) -> tuple[int, ...]:
        if self.layout == "NCHW":
            return (batch, self.channels, self.size, self.size)
        return (batch, self.size, self.size, self.channels)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, path: str | Path) -> Preprocess:
        data = json.loads(Path(path).read_text())
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        return cls(**data)


def load_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 (H, W) for grayscale or (H, W, 3) for colour."""
    with Image.open(path) as img:
        if img.mode in ("I", "F") or img.mode.startswith("I;16"):
            # Pillow's 8-bit conversion clips these at 255: a 16-bit X-ray would turn white.
            raise ValueError(
                f"{img.mode} image (more than 8 bits per pixel); convert it to 8-bit first"
            )
        gray = img.mode in ("1", "L", "LA")
        return np.asarray(img.convert("L" if gray else "RGB"))
