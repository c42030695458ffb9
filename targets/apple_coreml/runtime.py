"""apple-coreml at the hospital: the .mlpackage on Core ML through coremltools (macOS 12+).
Kind "torch" runs the intermediate PyTorch module the package was converted from: the labelled
proxy where Core ML cannot run. Shipped verbatim; imports numpy, Pillow and coremltools (or
torch for the proxy)."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

PROBS_OUTPUT, SCORES_OUTPUT = "classLabel_probs", "scores"
NOT_MAC = "Core ML predictions need macOS; coremltools cannot run them on {system}"


class Unavailable(RuntimeError):
    """This host cannot run the bundle as validated (not macOS, or coremltools missing)."""


def as_scores(out: np.ndarray, options: dict[str, Any]) -> np.ndarray:
    """What the report expects: where the build appended a softmax for the classifier and the
    source emits logits, log-probabilities stand in for them (softmax(log p) = p)."""
    out = np.asarray(out, np.float32)
    if options["softmax"] and options["scores"] == "logits":
        return np.log(np.clip(out, np.finfo(np.float32).tiny, None))
    return out


def chunks(x: np.ndarray, batch: int | None, max_batch: int) -> list[np.ndarray]:
    """A fixed-batch model gets its own batch size; a flexible one up to its maximum."""
    size = batch or max_batch
    return [x[i : i + size] for i in range(0, len(x), size)]


class TorchProxy:
    """The intermediate module on PyTorch CPU: the proxy where Core ML cannot run."""

    def __init__(self, bundle: Path, options: dict[str, Any]) -> None:
        self.path = bundle / options["intermediate"]
        self.options = options

    def load(self) -> None:
        try:
            import torch
        except ImportError:
            raise Unavailable("the PyTorch proxy needs torch; pip install torch") from None
        self.torch = torch
        self.module = torch.export.load(str(self.path)).module()

    def infer(self, x: np.ndarray) -> np.ndarray:
        outs = []
        with self.torch.no_grad():
            for part in chunks(x, self.options["intermediate_batch"], self.options["max_batch"]):
                t = self.torch.from_numpy(np.ascontiguousarray(part, np.float32))
                outs.append(self.module(t).numpy().reshape(len(part), -1))
        return as_scores(np.concatenate(outs), self.options)

    def close(self) -> None:
        self.module = None

    def info(self) -> dict[str, Any]:
        import torch

        return {
            "runtime": "torch",
            "version": torch.__version__,
            "device": "CPU",
            "module": "intermediate PyTorch module (FP32, CPU), proxy for Core ML",
            "threads": torch.get_num_threads(),
        }


class CoreML:
    """The .mlpackage on Core ML through coremltools (macOS only)."""

    def __init__(self, bundle: Path, options: dict[str, Any]) -> None:
        self.bundle = bundle
        self.options = options
        self.ct: Any = None

    def load(self) -> None:
        if sys.platform != "darwin":
            raise Unavailable(NOT_MAC.format(system=platform.system() or sys.platform))
        try:
            import coremltools as ct
        except ImportError:
            raise Unavailable(
                "coremltools is not installed; pip install -r requirements.txt"
            ) from None
        self.ct = ct
        units = ct.ComputeUnit[self.options["compute_units"]]
        self.model = ct.models.MLModel(
            str(self.bundle / self.options["model"]), compute_units=units
        )
        self.pre = json.loads((self.bundle / "preprocess.json").read_text())

    def _image(self, x: np.ndarray) -> Any:
        """Core ML takes 8-bit pixels: undo the preprocessing of one sample and round."""
        from PIL import Image

        pre = self.pre
        hwc = x.transpose(1, 2, 0) if pre["layout"] == "NCHW" else x
        std, mean = np.asarray(pre["std"], np.float32), np.asarray(pre["mean"], np.float32)
        pixels = np.clip(np.rint((hwc.astype(np.float32) * std + mean) / pre["scale"]), 0, 255)
        pixels = pixels.astype(np.uint8)
        if pre["channels"] == 1:
            return Image.fromarray(pixels[..., 0], "L")
        return Image.fromarray(pixels, "RGB")

    def _row(self, out: dict[str, Any]) -> np.ndarray:
        if self.options["classifier"]:
            probs = out[PROBS_OUTPUT]
            return np.array([probs[name] for name in self.options["labels"]], np.float32)
        return np.asarray(out[SCORES_OUTPUT], np.float32).reshape(-1)

    def infer(self, x: np.ndarray) -> np.ndarray:
        name, image = self.options["input_name"], self.options["image"]
        rows: list[np.ndarray] = []
        if self.options["batch"] == 1:  # one sample per prediction: Core ML's batch API
            feeds = [
                {name: self._image(s) if image else np.ascontiguousarray(s[None], np.float32)}
                for s in x
            ]
            rows = [self._row(o) for o in self.model.predict(feeds)]
        else:
            for part in chunks(x, self.options["batch"], self.options["max_batch"]):
                out = self.model.predict({name: np.ascontiguousarray(part, np.float32)})
                rows += list(np.asarray(out[SCORES_OUTPUT], np.float32).reshape(len(part), -1))
        return as_scores(np.stack(rows), self.options)

    def close(self) -> None:
        self.model = None

    def info(self) -> dict[str, Any]:
        return {
            "runtime": "coreml",
            "version": self.ct.__version__ if self.ct else None,
            "device": f"Core ML ({self.options['compute_units']})",
            "compute_units": self.options["compute_units"],
            "macos": platform.mac_ver()[0],
            "machine": platform.machine(),
        }


def open_runtime(bundle: Path, options: dict[str, Any], kind: str = "main") -> TorchProxy | CoreML:
    if kind == "torch":
        return TorchProxy(bundle, options)
    return CoreML(bundle, options)
