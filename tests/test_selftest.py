"""Ship exactly what was validated: every bundle runs the runtime.py that produced its numbers,
its predict.py reproduces the validation run, and the arrival self-test passes on this host,
fails on changed numerics (naming the cases) and exits 3 without the runtime."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from packager.builder.state import ValidationInfo, verdict
from tests.conftest import REPO, Result, assert_user_error

ROOT = Path("dist/tiny-1.0.0")
# Every target this host builds; gpu-tensorrt and apple-coreml run their labelled proxies here.
TARGETS = ("cpu-onnxruntime", "cpu-openvino", "edge-ort", "gpu-tensorrt")
PROXY = {"gpu-tensorrt": "proxy"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def dist(default_build: Callable[[str], tuple[Path, Result]]) -> Path:
    """The project folder of the session's `build --all --no-bench` with DEFAULT_TOML
    (conftest.default_dist), shared read-only: a test that writes beside a bundle copies it."""
    for target in TARGETS:
        root, r = default_build(target)
        [res] = [x for x in r.json["results"] if x["target"] == target]
        assert res["status"] in ("passed", "not-validated"), res  # what exit 0 allows
    return root


def _python_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("target", TARGETS)
def test_report_records_the_code_that_ships(dist: Path, target: str) -> None:
    bundle = dist / ROOT / target
    report = json.loads((bundle / "report.json").read_text())
    for name in ("runtime.py", "preprocess.py", "predict.py", "selftest.py"):
        assert report["code"][name] == sha256(bundle / name), name
    # Verbatim: the shipped runtime.py is the target package's own file, byte for byte.
    package = target.replace("-", "_")
    assert (bundle / "runtime.py").read_bytes() == (
        REPO / "targets" / package / "runtime.py"
    ).read_bytes()
    assert (bundle / "preprocess.py").read_bytes() == (
        REPO / "packager/shipped/preprocess.py"
    ).read_bytes()
    for name in ("runtime.py", "predict.py", "selftest.py", "preprocess.py"):
        assert "packager" not in _python_imports(bundle / name), name
    # The build ran the bundle's own self-test on the staged bundle, as a gate.
    check = next(c for c in report["gates"]["checks"] if c["name"] == "selftest")
    assert check["status"] == "passed", check


@pytest.mark.parametrize("target", TARGETS)
def test_predict_reproduces_the_validation_run(
    dist: Path, target: str, data_path: Path, tmp_path: Path
) -> None:
    """predict.py, one image per call as a hospital runs it, against validation.npz (batch 64):
    identical decisions, probabilities within the recorded self-test tolerance."""
    bundle = dist / ROOT / target
    with np.load(data_path) as d:
        images = d["test_images"]
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    kind = PROXY.get(target, "main")
    out = subprocess.run(
        [sys.executable, str(bundle / "predict.py"), "--kind", kind, *map(str, paths)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    got = np.array(
        [json.loads(line)["probabilities"]["pneumonia"] for line in out.stdout.splitlines()]
    )
    runtime = json.loads((bundle / "runtime.json").read_text())
    with np.load(bundle / "validation.npz") as v:
        validated = v["probs"][:, 1]
    thr = runtime["threshold"]
    tolerance = json.loads((bundle / "selftest.json").read_text())["tolerance"]
    diff = float(np.abs(got - validated).max())
    print(f"{target}: batch 1 (predict.py) vs batch 64 (validation) max |dp| = {diff:.2e}")
    assert diff <= tolerance
    np.testing.assert_array_equal(got >= thr, validated >= thr)


@pytest.mark.parametrize("target", ("gpu-tensorrt",))
def test_the_target_runtime_that_cannot_run_here_exits_3(dist: Path, target: str) -> None:
    bundle = dist / ROOT / target
    out = subprocess.run(
        [sys.executable, str(bundle / "predict.py"), "--self-test", "--record", os.devnull],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 3, out.stdout + out.stderr
    assert "self-test not run" in out.stdout and "Traceback" not in out.stderr


def _copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    return dest


def _rehash(bundle: Path, name: str) -> None:
    """What an attacker or a careless re-packager would do: the manifest agrees again."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][name]["sha256"] = sha256(bundle / name)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _selftest(bundle: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(bundle / "predict.py"), "--self-test", *extra],
        capture_output=True,
        text=True,
    )


def test_self_test_fails_on_other_weights(
    dist: Path, make_model: Callable[..., Path], tmp_path: Path
) -> None:
    bundle = _copy(dist / ROOT / "cpu-onnxruntime", tmp_path / "cpu-onnxruntime")
    shutil.copyfile(make_model("scaled_head", head_scale=1.5), bundle / "model.onnx")
    _rehash(bundle, "model.onnx")
    out = _selftest(bundle)
    assert out.returncode == 1, out.stdout + out.stderr
    record = json.loads((tmp_path / "cpu-onnxruntime.acceptance.json").read_text())
    probs = next(c for c in record["checks"] if c["name"] == "probabilities")
    # The record's numbers, recomputed: golden probabilities vs the swapped model's own outputs.
    with np.load(bundle / "selftest.npz") as g:
        golden, x = g["probs"], g["x"]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    diff = np.abs(e / e.sum(axis=1, keepdims=True) - golden).max(axis=1)
    tol = probs["tolerance"]
    # Rows past x are the raw image files (recounted in tests/test_trust_golden.py).
    tensor_failing = [i for i in probs["failing_cases"] if i < len(x)]
    assert tensor_failing == np.flatnonzero(diff > tol).tolist() != []
    if probs["worst"]["case"] < len(x):
        assert probs["worst"]["case"] == int(np.argmax(diff))
    assert probs["max_abs_diff"] >= diff.max()
    assert f"{probs['failing']} of {probs['cases']} cases differ" in out.stdout
    assert f"worst case #{probs['worst']['case']}" in out.stdout
    assert record["verdict"] == "rejected"


def test_self_test_names_a_changed_file(dist: Path, tmp_path: Path) -> None:
    bundle = _copy(dist / ROOT / "edge-ort", tmp_path / "edge-ort")
    data = bytearray((bundle / "model.ort").read_bytes())
    data[len(data) // 2] ^= 1
    (bundle / "model.ort").write_bytes(bytes(data))
    out = _selftest(bundle)
    assert out.returncode == 1 and "changed: model.ort" in out.stdout


def test_packager_selftest_on_a_tarball(
    dist: Path, cli: Callable[..., object], tmp_path: Path
) -> None:
    # a copy: the record goes beside the tarball
    tar = Path(shutil.copy(dist / ROOT / "cpu-openvino.tar.gz", tmp_path))
    r = cli("selftest", tar, "--json", cwd=tmp_path)
    assert r.code == 0, r.stderr  # type: ignore[attr-defined]
    record = r.json  # type: ignore[attr-defined]
    assert record["verdict"] == "accepted"
    assert record["bundle"]["target"] == "cpu-openvino"
    assert record["host"]["cpu"] and record["runtime"]["runtime"] == "openvino"
    assert (tmp_path / "cpu-openvino.acceptance.json").is_file()
    assert_user_error(cli("selftest", tmp_path / "nothing-here", cwd=tmp_path), "neither")  # type: ignore[arg-type]


def test_a_check_that_did_not_run_is_never_passed() -> None:
    from packager.core.target import Check

    check = Check("cross-check", None, 0, True, "onnxruntime-gpu is not installed", ran=False)
    assert not check.passed and check.to_dict()["status"] == "not-run"
    checks = [Check("min_sensitivity", 1.0, 0.98, True), check]
    status, reason = verdict(checks, ValidationInfo(None))
    assert status == "not-validated"
    assert "cross-check not run (onnxruntime-gpu is not installed)" in reason


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory, dist: Path) -> Path:
    """A venv with nothing but the cpu-onnxruntime bundle's requirements.txt (no packager)."""
    where = tmp_path_factory.mktemp("venv") / "v"
    venv.create(where, with_pip=True)
    py = where / "bin" / "python"
    req = dist / ROOT / "cpu-onnxruntime" / "requirements.txt"
    pip = subprocess.run(
        [py, "-m", "pip", "install", "-q", "-r", req], capture_output=True, text=True
    )
    if pip.returncode != 0:
        pytest.fail(f"pip could not install the bundle's requirements: {pip.stderr[-500:]}")
    return py


def test_self_test_in_a_fresh_venv(fresh_venv: Path, dist: Path, tmp_path: Path) -> None:
    py = fresh_venv
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [py, *map(str, args)], capture_output=True, text=True, cwd=tmp_path, env=env
        )

    assert run("-c", "import packager").returncode != 0  # only the bundle's requirements
    for target in ("cpu-onnxruntime", "edge-ort"):
        bundle = dist / ROOT / target
        out = run(bundle / "predict.py", "--self-test", "--record", tmp_path / f"{target}.json")
        assert out.returncode == 0, out.stdout + out.stderr
    # No OpenVINO in this venv: exit 3, one line, no traceback.
    bundle = dist / ROOT / "cpu-openvino"
    cmd = (bundle / "predict.py", "--self-test", "--record", tmp_path / "ov.json")
    out = run(*cmd)
    assert out.returncode == 3 and "openvino is not installed" in out.stdout
    assert "Traceback" not in out.stderr and len(out.stdout.strip().splitlines()) == 1
    pip = subprocess.run(
        [py, "-m", "pip", "install", "-q", "-r", bundle / "requirements.txt"], capture_output=True
    )
    assert pip.returncode == 0
    out = run(*cmd)
    assert out.returncode == 0, out.stdout + out.stderr
