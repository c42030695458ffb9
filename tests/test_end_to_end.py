"""End-to-end claims no other test covers: a disk that fills up during a rebuild leaves the
previous bundle byte-identical; a calibration split equal to the validation split is refused;
a 3-class model goes through cpu-onnxruntime and cpu-openvino, recounted independently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DEFAULT_TOML, Result, assert_user_error, bundle_dir, run_predict
from tests.test_bad_inputs import NAMESPACE, assert_unpublished
from tests.test_recount import check_report

BUILD = ["build", "--target", "cpu-onnxruntime", "--no-bench", "-q"]


@pytest.mark.skipif(bool(NAMESPACE), reason=NAMESPACE or "ok")
def test_disk_full_during_a_rebuild_keeps_the_previous_bundle(project) -> None:
    """In a private mount namespace: a tmpfs with room for one bundle but not for a second
    beside it. The first build publishes; the forced rebuild (another description, so other
    bytes) runs out of space; the published bundle is then byte for byte the first one."""
    root = project()
    out = root / "small"
    out.mkdir()
    toml = (root / "packager.toml").read_text()
    (root / "second.toml").write_text(
        toml.replace('version = "1.0.0"', 'version = "1.0.0"\ndescription = "second"')
    )
    snapshot = (
        'cd "$T/tiny-1.0.0" && find -L cpu-onnxruntime cpu-onnxruntime.tar.gz -type f | sort '
        "| xargs sha256sum"
    )
    script = (
        'mount -t tmpfs -o size=800k tmpfs "$T" && "$PY" -m packager.cli "$@" --out "$T" '
        f'&& ({snapshot}) > "$R/before.txt" '
        '&& { "$PY" -m packager.cli "$@" --out "$T" --force --config "$R/second.toml" '
        '2> "$R/second.err"; echo $? > "$R/second.rc"; } '
        f'&& ({snapshot}) > "$R/after.txt"'
    )
    env = {**os.environ, "T": str(out), "R": str(root), "PY": sys.executable}
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", *BUILD],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    second = Result(int((root / "second.rc").read_text()), "", (root / "second.err").read_text())
    assert_user_error(second, "no space left")
    before, after = (root / "before.txt").read_text(), (root / "after.txt").read_text()
    assert "manifest.json" in before and "cpu-onnxruntime.tar.gz" in before
    assert after == before


def test_calibration_split_equal_to_validation_split_is_refused(project, cli) -> None:
    root = project('[targets.cpu-openvino]\nprecision = "fp32"\n')
    toml = root / "packager.toml"
    toml.write_text(toml.read_text().replace("[data]\n", '[data]\ncalibration_split = "test"\n'))
    r = cli("build", "-t", "cpu-openvino", "--int8", "--no-bench", cwd=root)
    assert_user_error(r, "calibration_split", "validation split")
    assert_unpublished(root)


# ---------------------------------------------------------------------------------------------
# A 3-class model

THREE = ["normal", "pneumonia", "bright-normal"]


@pytest.fixture(scope="module")
def three_class(
    tmp_path_factory: pytest.TempPathFactory, data_path: Path
) -> tuple[Path, Path, np.ndarray]:
    """(model, dataset, its test labels): PneumoniaMNIST with a third class made from the
    brighter half of the normal images, and a softmax head fit on it."""
    from tests.models import make_three_class

    root = tmp_path_factory.mktemp("three")
    data = root / "three.npz"
    model = make_three_class(root / "three.onnx", str(data_path), data)
    with np.load(data) as d:
        labels = d["test_labels"].reshape(-1).astype(np.int64)
    assert set(np.unique(labels)) == {0, 1, 2}
    return model, data, labels


@pytest.mark.parametrize("target", ["cpu-onnxruntime", "cpu-openvino"])
def test_three_class_model_end_to_end(
    target: str,
    three_class: tuple[Path, Path, np.ndarray],
    cli: Callable[..., Result],
    tmp_path: Path,
) -> None:
    model, data, labels = three_class
    toml = DEFAULT_TOML.format(model=model, data=data).replace(
        "[labels]\n", f'[labels]\nnames = {json.dumps(THREE)}\npositive = "pneumonia"\n'
    )
    classes = "".join(
        f"[gates.classes.{name}]\nmin_sensitivity = 0.0\nmin_specificity = 0.0\n" for name in THREE
    )
    (tmp_path / "packager.toml").write_text(toml + "[gates]\nmin_sensitivity = 0.9\n" + classes)
    r = cli("build", "-t", target, "--no-bench", cwd=tmp_path)
    assert r.code == 0, r.stderr
    bundle = bundle_dir(tmp_path, target)
    report = check_report(bundle, labels, {"min_sensitivity": 0.9, "max_sensitivity_drop": 0.005})
    assert report["status"] == "passed"
    # Each class against the rest, on the class the bundle decides (pneumonia at p >= the
    # threshold, else the more probable of the other two), counted one image at a time.
    checks = {c["name"]: c for c in report["gates"]["checks"]}
    threshold = report["clinical"]["threshold"]
    with np.load(bundle / "validation.npz") as v:
        probs = v["probs"].astype(np.float64)
    decided = [1 if p[1] >= threshold else (0 if p[0] >= p[2] else 2) for p in probs]
    for k, name in enumerate(THREE):
        pairs = list(zip(labels, decided, strict=True))
        tp = sum(1 for t, d in pairs if t == k and d == k)
        tn = sum(1 for t, d in pairs if t != k and d != k)
        npos = sum(1 for t in labels if t == k)
        assert report["clinical"]["classes"][name]["tp"] == tp
        sens, spec = (
            checks[f"min_sensitivity[class={name}]"],
            checks[f"min_specificity[class={name}]"],
        )
        assert sens["value"] == pytest.approx(tp / npos, abs=1e-6)
        assert spec["value"] == pytest.approx(tn / (len(labels) - npos), abs=1e-6)
        assert sens["verdict"] == spec["verdict"] == "pass"
    with np.load(bundle / "validation.npz") as v:
        assert v["probs"].shape == (len(labels), 3)
        np.testing.assert_allclose(v["probs"].sum(1), 1, atol=1e-5)
        with np.load(data) as d:
            image = d["test_images"][5]
        line = run_predict(bundle, image, tmp_path)
        assert list(line["probabilities"]) == THREE
        assert line["probabilities"]["pneumonia"] == pytest.approx(
            float(v["probs"][5, 1]), abs=1e-5
        )
