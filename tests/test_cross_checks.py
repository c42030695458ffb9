"""Declared cross-checks (Target.cross_checks): the build runs each through the worker on the
validation split and gates on flipped decisions. Here the reference target, on real ONNX Runtime,
declares a second runner over a real model with a half-scale head (decisions near the threshold
move), the same model again, and one this host cannot run; the flips are recounted with plain
numpy from ONNX Runtime's own outputs."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from packager.builder.pipeline import build_one as _build_one
from packager.builder.pipeline import target_options
from packager.builder.session import Session
from packager.core.config import load_config
from packager.core.progress import Progress
from packager.core.target import BuildContext, BuildOutput, CrossCheck, Status
from packager.targets.cpu_onnxruntime import CpuOnnxRuntime

HALF = "decisions differing from a half-scale head"
SAME = "decisions differing from the same model"
ABSENT = "decisions differing from an absent runtime"


class Declaring(CpuOnnxRuntime):
    """The reference target, shipping one more model and declaring cross-checks on it."""

    def __init__(self, extra_model: Path) -> None:
        self.extra_model = extra_model

    @classmethod
    def runtime_source(cls) -> Path:
        return CpuOnnxRuntime.runtime_source()

    def build(self, ctx: BuildContext, stage: Path) -> BuildOutput:
        out = super().build(ctx, stage)
        shutil.copyfile(self.extra_model, stage / "half.onnx")
        return out

    def cross_checks(self, options: dict[str, Any]) -> list[CrossCheck]:
        return [
            CrossCheck(HALF, "main", max_flips=0, options={"model": "half.onnx"}),
            CrossCheck(SAME, "main", max_flip_rate=0.01),
            CrossCheck(
                ABSENT,
                "main",
                max_flips=0,
                available=lambda: Status(False, "no such accelerator on this host"),
            ),
        ]


def _positive_probability(model: Path, x: np.ndarray, positive: int) -> np.ndarray:
    """ONNX Runtime's own output, softmaxed in numpy (the tiny model returns logits)."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True))[:, positive]


def test_a_cross_check_that_flips_decisions_fails_the_build(
    project: Callable[..., Path], tiny_model: Path, make_model: Callable[..., Path]
) -> None:
    half = make_model("tiny_half_head", head_scale=0.5)
    root = project()
    s = Session.open(load_config(None, root), Progress(False))
    t = Declaring(half)
    result = _build_one(s, t, target_options(t, s, False), s.reference, False, False)
    report = result.report
    assert report is not None
    checks = {c["name"]: c for c in report["gates"]["checks"]}

    pos, thr = s.cfg.labels.positive_index, s.cfg.labels.threshold
    x = s.x.astype(np.float32)
    ours = _positive_probability(tiny_model, x, pos) >= thr
    theirs = _positive_probability(half, x, pos) >= thr
    differ = np.flatnonzero(ours != theirs).tolist()
    assert differ, "the half-scale head must move some decision at this threshold"

    flips = checks[HALF]
    assert flips["value"] == len(differ) and flips["limit"] == 0
    assert flips["status"] == "failed" and not flips["passed"]
    assert f"differ at indices {differ[:20]}" in flips["reason"]
    assert f"{len(x) - len(differ)}/{len(x)} decisions agree" in flips["reason"]

    same = checks[SAME]
    assert same["status"] == "passed" and same["value"] == 0
    assert same["limit"] == math.ceil(0.01 * len(x))

    absent = checks[ABSENT]
    assert absent["status"] == "not-run" and not absent["passed"] and absent["value"] is None
    assert "no such accelerator on this host" in absent["reason"]
    # the validate step fails for the gate that failed, and names the one that did not run
    # without counting it as failed
    [step] = [st for st in report["steps"] if st["name"] == "validate"]
    assert step["status"] == "failed" and f"{HALF} = {len(differ)} (limit 0)" in step["reason"]
    assert f"{ABSENT} not run" in step["reason"] and f"{ABSENT} None vs" not in step["reason"]

    # the failed gate fails the build: kept under .failed/, not published
    assert result.status == "failed" and report["status"] == "failed"
    assert result.bundle is not None and "/.failed/" in result.bundle
    on_disk = json.loads((Path(result.bundle) / "report.json").read_text())
    assert on_disk["gates"]["checks"] == report["gates"]["checks"]
