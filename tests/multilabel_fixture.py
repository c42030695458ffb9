"""A small 3-finding sigmoid model and its data for the multi-label tests, built from the real
PneumoniaMNIST images. The findings are SYNTHETIC, computed from each image: "bright" (mean
intensity), "upper" (top half brighter than the bottom) and "left" (left half brighter than the
right), each above its train-split median. The model computes the same three features from the
preprocessed image (a 3x3 smoothing conv, 2x2 quadrant means, a linear layer, a sigmoid), so it
agrees with the labels except near each median: sensitivity is high but not perfect, as a real
model's is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Result

FINDINGS = ["bright", "upper", "left"]
SIZE = 32
GAIN = 12.0
NAME = "cxr-3-findings-0.0.0"  # the bundles' folder


def features(images: np.ndarray) -> np.ndarray:
    """(N, 3) mean, top-minus-bottom and left-minus-right of the 28x28 uint8 images, in the
    model's normalised units ((v / 255 - 0.5) / 0.5)."""
    x = images.astype(np.float64) / 127.5 - 1.0
    h, w = x.shape[1] // 2, x.shape[2] // 2
    mean = x.mean(axis=(1, 2))
    upper = x[:, :h].mean(axis=(1, 2)) - x[:, h:].mean(axis=(1, 2))
    left = x[:, :, :w].mean(axis=(1, 2)) - x[:, :, w:].mean(axis=(1, 2))
    return np.stack([mean, upper, left], axis=1)


def write_data(source: Path, out: Path, limit: int = 400) -> tuple[Path, np.ndarray]:
    """A multi-label npz ({split}_images, {split}_labels (N, 3) 0/1) from PneumoniaMNIST, each
    split cut to `limit` images; returns it with the train medians the labels split at."""
    with np.load(source) as z:
        splits = {s: z[f"{s}_images"][:limit] for s in ("train", "val", "test")}
    medians = np.median(features(splits["train"]), axis=0)
    arrays = {}
    for s, images in splits.items():
        arrays[f"{s}_images"] = images
        arrays[f"{s}_labels"] = (features(images) > medians).astype(np.int64)
    np.savez(out, **arrays)
    return out, medians


def write_model(
    path: Path, medians: np.ndarray, logits: bool = False, hw: tuple[int, int] = (SIZE, SIZE)
) -> Path:
    """The ONNX model: (N, 1, height, width) float in, (N, 3) out, probabilities (ending in a
    Sigmoid) unless `logits`."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.smooth = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
            self.smooth.weight.data.fill_(1 / 9)
            self.pool = torch.nn.AvgPool2d((hw[0] // 2, hw[1] // 2))
            self.head = torch.nn.Linear(4, 3)
            # quadrants TL, TR, BL, BR -> mean, upper - lower, left - right
            w = torch.tensor(
                [[0.25, 0.25, 0.25, 0.25], [0.5, 0.5, -0.5, -0.5], [0.5, -0.5, 0.5, -0.5]]
            )
            self.head.weight.data = GAIN * w
            self.head.bias.data = torch.tensor(-GAIN * medians, dtype=torch.float32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.head(torch.flatten(self.pool(self.smooth(x)), 1))
            return z if logits else torch.sigmoid(z)

    torch.onnx.export(
        Net().eval(),
        torch.zeros(1, 1, *hw),
        str(path),
        input_names=["input"],
        output_names=["findings"],
        dynamic_axes={"input": {0: "batch"}, "findings": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def config_text(model: Path, data: Path, extra: str = "") -> str:
    names = ", ".join(f'"{n}"' for n in FINDINGS)
    return f"""
[model]
path = "{model}"
name = "cxr-3-findings"
[data]
path = "{data}"
split = "test"
calibration_split = "train"
calibration_size = 100
[preprocess]
size = {SIZE}
channels = 1
layout = "NCHW"
mean = [0.5]
std = [0.5]
[labels]
task = "multilabel"
names = [{names}]
threshold = 0.5
[gates]
min_sensitivity = 0.8
max_sensitivity_drop = 0.05
[bench]
batch_sizes = [1]
seconds = 0.2
{extra}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, data_path: Path) -> Path:
    root = tmp_path_factory.mktemp("multilabel")
    data, medians = write_data(data_path, root / "findings.npz")
    model = write_model(root / "model.onnx", medians)
    (root / "packager.toml").write_text(config_text(model, data))
    return root


def build(root: Path, out: Path, *args: str) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "packager.cli", "build", "--config", str(root / "packager.toml")]
        + ["--no-bench", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
