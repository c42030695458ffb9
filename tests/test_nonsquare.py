"""Non-square inputs (issue 30 item 5): `[preprocess] size = [height, width]` on a 1-channel model
of fixed 24x40 input. The build's numbers are recounted from the source ONNX model on ONNX
Runtime with the images resized by Pillow directly (not packager's preprocessing), and a size
that disagrees with the model's is refused before anything loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from packager.builder.session import resolve_preprocess
from packager.core.config import load_config
from packager.core.errors import UserError
from packager.core.model import inspect_model
from tests.multilabel_fixture import FINDINGS, NAME, build, config_text, write_data, write_model

HW = (24, 40)
TARGETS = ("cpu-onnxruntime", "edge-ort")  # OpenVINO runs the same preprocess.py


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, data_path: Path) -> Path:
    root = tmp_path_factory.mktemp("nonsquare")
    data, medians = write_data(data_path, root / "findings.npz", limit=200)
    model = write_model(root / "model.onnx", medians, hw=HW)
    extra = "[targets.edge-ort]\nembed_preprocessing = true\n"  # the in-graph Resize too
    text = config_text(model, data, extra).replace("size = 32", f"size = [{HW[0]}, {HW[1]}]")
    (root / "packager.toml").write_text(text)
    return root


@pytest.fixture(scope="module")
def built(project: Path) -> Path:
    r = build(project, project / "dist", *(a for t in TARGETS for a in ("-t", t)))
    assert r.code == 0, r.stderr[-3000:]
    return project / "dist" / NAME


def _independent_probs(project: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pillow resizes each 28x28 image to width 40, height 24 in float mode; ((v / 255) - 0.5)
    / 0.5; the source model on ONNX Runtime."""
    with np.load(project / "findings.npz") as z:
        images, labels = z["test_images"], z["test_labels"]
    x = np.stack(
        [
            np.asarray(
                Image.fromarray(im.astype(np.float32), mode="F").resize(
                    (HW[1], HW[0]), Image.Resampling.BILINEAR
                )
            )
            for im in images
        ]
    )
    x = ((x / 255.0 - 0.5) / 0.5).astype(np.float32)[:, None]
    sess = ort.InferenceSession(str(project / "model.onnx"), providers=["CPUExecutionProvider"])
    return labels, sess.run(None, {"input": x})[0]


@pytest.mark.parametrize("target", TARGETS)
def test_nonsquare_build_recounted(built: Path, project: Path, target: str) -> None:
    b = built / target
    assert json.loads((b / "preprocess.json").read_text())["size"] == list(HW)
    report = json.loads((b / "report.json").read_text())
    assert report["status"] == "passed", report["reason"]
    labels, independent = _independent_probs(project)
    with np.load(b / "validation.npz") as z:
        reference, probs = z["reference"], z["probs"].astype(np.float64)
    # the build's reference run is the source model on Pillow-resized 24x40 images
    np.testing.assert_allclose(reference, independent, atol=1e-5)
    near = np.abs(independent - 0.5) < 1e-3  # where a target's rounding may flip a decision
    assert ((probs >= 0.5) == (independent >= 0.5))[~near].all()
    for k, name in enumerate(FINDINGS):
        y, d = labels[:, k] == 1, probs[:, k] >= 0.5
        f = report["clinical"]["findings"][name]
        assert f["sensitivity"] == pytest.approx((d & y).sum() / y.sum(), abs=1e-12)
        assert f["specificity"] == pytest.approx((~d & ~y).sum() / (~y).sum(), abs=1e-12)


def test_the_in_graph_resize_matches_pillow(built: Path) -> None:
    """edge-ort's model_image.ort resizes in the graph (ONNX Resize to 24x40); the build checks
    it against preprocess.py on every validation image, as encoded PNGs."""
    report = json.loads((built / "edge-ort" / "report.json").read_text())
    check = next(c for c in report["gates"]["checks"] if c["name"] == "image_model_agreement")
    assert check["passed"] and check["value"] == 1.0
    summary = json.loads((built / "edge-ort" / "image_model_validation.json").read_text())
    assert summary["differing_indices"] == [] and summary["max_abs_diff_input_tensor"] < 1e-4


def test_nonsquare_predict_matches_pillow(built: Path, project: Path) -> None:
    labels, probs = _independent_probs(project)
    with np.load(project / "findings.npz") as z:
        image = z["test_images"][3]
    png = project / "three.png"
    Image.fromarray(image).save(png)
    out = subprocess.run(
        [sys.executable, str(built / "cpu-onnxruntime" / "predict.py"), str(png)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)["probabilities"]
    np.testing.assert_allclose([got[n] for n in FINDINGS], probs[3], atol=1e-5)


def test_a_size_unlike_the_models_is_refused(project: Path, tmp_path: Path) -> None:
    """Through the CLI once (exit 2, one line, nothing published), and in process for the
    other forms of the same refusal."""
    text = (project / "packager.toml").read_text()
    (tmp_path / "packager.toml").write_text(text.replace("size = [24, 40]", "size = [40, 24]"))
    r = build(tmp_path, tmp_path / "dist", "-t", "cpu-onnxruntime")
    assert r.code == 2, r.stderr
    assert r.stderr.strip() == (
        "packager: error: the model expects 24x40 images but [preprocess] size = [40, 24]; "
        "make them match"
    )
    assert not (tmp_path / "dist" / NAME).exists()
    info = inspect_model(project / "model.onnx")
    for size, shown in (("24", "24"), ("[24, 41]", "[24, 41]"), ("40", "40")):
        (tmp_path / "packager.toml").write_text(text.replace("size = [24, 40]", f"size = {size}"))
        with pytest.raises(UserError) as err:
            resolve_preprocess(load_config(tmp_path / "packager.toml"), info)
        assert str(err.value) == (
            f"the model expects 24x40 images but [preprocess] size = {shown}; make them match"
        )
    (tmp_path / "packager.toml").write_text(text.replace("size = [24, 40]", "size = [24, 40]"))
    assert resolve_preprocess(load_config(tmp_path / "packager.toml"), info).hw == HW
