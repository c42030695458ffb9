#!/usr/bin/env python3
"""The DenseNet-121-sized multi-label case of issue 30: write it, check it, time it.

    python benchmarks/multilabel_densenet.py [--out DIR] [--data PATH] [--size 224] [--runs 50]

Writes into DIR (default dist/densenet121):
- model.onnx: `write_densenet`, DenseNet-121 with 14 sigmoid outputs on 1x224x224, UNTRAINED
  (seeded initialisation): its cost is real, its outputs mean nothing;
- multilabel.npz: PneumoniaMNIST's 28x28 images (packager resizes them to [preprocess] size) with
  (N, 14) labels: pneumonia is real, the 13 others SYNTHETIC pixel statistics
  (packager/example/multilabel/data.py);
- packager.toml: each finding's threshold chosen on val as the multi-label example does.

Then prints the parameter count, the onnx.checker and ONNX Runtime checks (shape (N, 14), values in
[0, 1]) and ONNX Runtime CPU latency at batch 1. Numbers are printed, never asserted. Then
`packager build --config DIR/packager.toml --all` builds it on every target (README gives the
time it took).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from packager.example.data import find_data  # noqa: E402
from packager.example.multilabel.data import finding_names, write_multilabel  # noqa: E402
from packager.example.multilabel.densenet import make_densenet, write_densenet  # noqa: E402
from packager.example.multilabel.project import check_config, preprocess, rationale  # noqa: E402
from packager.example.multilabel.train import choose_threshold, onnx_probabilities  # noqa: E402
from packager.shipped.ort_session import OrtSession  # noqa: E402
from packager.shipped.preprocess import Preprocess  # noqa: E402

FINDINGS = 14
CHANNELS = 1

PROJECT = """\
# The DenseNet-121-sized multi-label timing case, written by benchmarks/multilabel_densenet.py.
# UNTRAINED weights and 13 SYNTHETIC findings (pneumonia is the one real label): the model's cost
# is real, its metrics are not. The gates are set low so every step of a build runs: the build's
# time is the point. INT8 is plain PTQ: accuracy control would chase drops that only measure noise.

[model]
path = "model.onnx"
name = "cxr-densenet121-untrained"
version = "0.0.1"
description = "DenseNet-121 (untrained), {channels}x{size}x{size}, {k} sigmoid outputs; timing case"

[data]
path = "multilabel.npz"
split = "test"
calibration_split = "train"

[preprocess]
size = {size}
channels = {channels}
layout = "{layout}"
scale = {scale!r}
mean = {mean}
std = {std}
resize = "{resize}"

[labels]
task = "multilabel"
names = {names}
output = "probabilities"
threshold = 0.5
threshold_rationale = {rationale}

[labels.thresholds]
{thresholds}

[gates]
min_sensitivity = 0.5
max_sensitivity_drop = 1.0

[bench]
batch_sizes = [1, 8]

[targets.cpu-openvino]
precision = "int8"
int8_mode = "ptq"
"""


def preprocess_at(size: int) -> Preprocess:
    """The multi-label example's preprocessing at another resolution."""
    return dataclasses.replace(preprocess(), size=size, channels=CHANNELS)


def check_model(model: Path, x: np.ndarray) -> np.ndarray:
    """onnx.checker (full), then ONNX Runtime on `x`: (N, FINDINGS) probabilities or an error."""
    onnx.checker.check_model(onnx.load(str(model)), full_check=True)
    with OrtSession(model) as runner:
        y = np.array(runner.infer(x))
    if y.shape != (len(x), FINDINGS) or not np.all((y >= 0) & (y <= 1)):
        raise SystemExit(f"{model}: outputs {y.shape} in [{y.min()}, {y.max()}]")
    return y


def latency_ms(model: Path, x: np.ndarray, runs: int, warmup: int = 5) -> list[float]:
    """Batch-1 wall times of OrtSession.infer (I/O binding, ONNX Runtime's default threads)."""
    times = []
    with OrtSession(model) as runner:
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            runner.infer(x[i % len(x)][None])
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    return times


def write_project(out: Path, src: Path, size: int) -> Path:
    """DIR/model.onnx, DIR/multilabel.npz and DIR/packager.toml (thresholds chosen on val)."""
    model = write_densenet(out / "model.onnx", size, CHANNELS, FINDINGS)
    npz = write_multilabel(src, out / "multilabel.npz", FINDINGS)
    pre = preprocess_at(size)
    with np.load(npz) as d:
        x, y = pre(d["val_images"]), d["val_labels"]
    p = onnx_probabilities(model, x)
    names = finding_names(FINDINGS)
    chosen = {name: choose_threshold(p[:, i], y[:, i]) for i, name in enumerate(names)}
    text = PROJECT.format(
        size=size,
        channels=CHANNELS,
        k=FINDINGS,
        layout=pre.layout,
        scale=pre.scale,
        mean=list(pre.mean),
        std=list(pre.std),
        resize=pre.resize,
        names=json.dumps(list(names)),
        rationale=json.dumps(rationale(chosen)),
        thresholds="\n".join(f"{n} = {t['value']!r}" for n, t in chosen.items()),
    )
    path = out / "packager.toml"
    path.write_text(text)
    check_config(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "dist" / "densenet121")
    ap.add_argument("--data", type=Path, default=None, help="pneumoniamnist.npz")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    out = args.out.resolve()
    params = sum(p.numel() for p in make_densenet(FINDINGS, CHANNELS).parameters())
    t0 = time.perf_counter()
    config = write_project(out, find_data(args.data), args.size)
    written = time.perf_counter() - t0
    with np.load(out / "multilabel.npz") as d:
        x = preprocess_at(args.size)(d["test_images"][:8])
    y = check_model(out / "model.onnx", x)
    ms = latency_ms(out / "model.onnx", x, args.runs)
    q = statistics.quantiles(ms, n=10)
    mb = (out / "model.onnx").stat().st_size / 1e6
    print(f"parameters      {params:,}")
    print(f"model.onnx      {mb:.1f} MB, onnx.checker (full) passed")
    print(f"onnxruntime     outputs {y.shape}, in [{y.min():.4f}, {y.max():.4f}]")
    print(
        f"batch-1 latency p50 {statistics.median(ms):.1f} ms, p90 {q[-1]:.1f} ms ({args.runs} runs)"
    )
    print(f"project         {config} (written in {written:.0f}s, val thresholds included)")


if __name__ == "__main__":
    main()
