"""The multi-label example (issue 30): its data (pneumonia real, the other findings synthetic)
against a numpy recount, a short real training run whose ONNX model, metrics and thresholds are
recounted with onnxruntime, numpy and scikit-learn, and the DenseNet-121-sized model's size and
outputs. Training uses a narrow model on a small train subset so the suite stays fast."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tomllib
from sklearn.metrics import roc_auc_score

from packager.core.errors import UserError
from packager.core.progress import Progress
from packager.example.multilabel.data import finding_names, write_multilabel
from packager.example.multilabel.densenet import make_densenet, write_densenet
from packager.example.multilabel.project import check_config, preprocess
from packager.example.multilabel.train import FILES, Settings, trained_model
from tests.conftest import REPO

SMOKE = Settings(epochs=1, width=8, limit=256)
BOUNDS = [(0, 9), (9, 19), (19, 28)]  # the 3x3 grid of data.py's docstring


@pytest.fixture(scope="module")
def source(data_path: Path) -> dict[str, np.ndarray]:
    with np.load(data_path) as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="module")
def trained(data_path: Path) -> Path:
    return trained_model(data_path, SMOKE, Progress(False))


def _above_train_quantile(stat: dict[str, np.ndarray], q: float) -> dict[str, np.ndarray]:
    cut = np.percentile(stat["train"], 100 * q)
    return {split: (v > cut).astype(int) for split, v in stat.items()}


def recount(source: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Every synthetic finding from the docstring's definitions, written independently."""
    px = {s: source[f"{s}_images"].astype(np.float64).reshape(-1, 28 * 28) for s in SPLITS}
    grid = {s: v.reshape(-1, 28, 28) for s, v in px.items()}

    def mean_of(rows: slice, cols: slice) -> dict[str, np.ndarray]:
        return {
            s: g[:, rows, cols].sum(axis=(1, 2)) / g[:, rows, cols][0].size for s, g in grid.items()
        }

    found = {
        "bright": _above_train_quantile({s: v.sum(1) / 784 for s, v in px.items()}, 0.5),
        "asymmetric": _above_train_quantile(
            {
                s: abs(
                    mean_of(slice(0, 28), slice(0, 14))[s] - mean_of(slice(0, 28), slice(14, 28))[s]
                )
                for s in SPLITS
            },
            0.7,
        ),
    }
    rows, cols = ("upper", "middle", "lower"), ("left", "centre", "right")
    for i, (r, c) in enumerate((r, c) for r in range(3) for c in range(3)):
        region = mean_of(slice(*BOUNDS[r]), slice(*BOUNDS[c]))
        found[f"bright_{rows[r]}_{cols[c]}"] = _above_train_quantile(region, (0.5, 0.7, 0.9)[i % 3])
    found["high_contrast"] = _above_train_quantile({s: v.std(1) for s, v in px.items()}, 0.7)
    top = mean_of(slice(0, 14), slice(0, 28))
    bottom = mean_of(slice(14, 28), slice(0, 28))
    found["top_heavy"] = _above_train_quantile({s: top[s] - bottom[s] for s in SPLITS}, 0.8)
    return found


SPLITS = ("train", "val", "test")


@pytest.mark.parametrize("k", [3, 14])
def test_labels_are_pneumonia_then_an_independent_recount(
    k: int, source: dict[str, np.ndarray], data_path: Path, tmp_path: Path
) -> None:
    path = write_multilabel(data_path, tmp_path / "ml.npz", k)
    expected = recount(source)
    names = finding_names(k)
    assert names[:3] == ("pneumonia", "bright", "asymmetric") and len(names) == k
    with np.load(path) as d:
        assert sorted(d.files) == sorted(f"{s}_{w}" for s in SPLITS for w in ("images", "labels"))
        for s in SPLITS:
            y = d[f"{s}_labels"]
            assert y.shape == (len(source[f"{s}_images"]), k) and y.dtype == np.int64
            assert set(np.unique(y)) <= {0, 1}
            np.testing.assert_array_equal(d[f"{s}_images"], source[f"{s}_images"])
            np.testing.assert_array_equal(y[:, 0], source[f"{s}_labels"][:, 0])
            for j, name in enumerate(names[1:], start=1):
                np.testing.assert_array_equal(y[:, j], expected[name][s], err_msg=name)
    # The cuts are train quantiles, so train prevalences are what the docstring promises.
    train = np.load(path)["train_labels"]
    assert abs(train[:, 1].mean() - 0.5) < 0.01 and abs(train[:, 2].mean() - 0.3) < 0.01


def test_an_unknown_finding_count_is_refused(data_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 or 14"):
        write_multilabel(data_path, tmp_path / "ml.npz", 5)


def _ort(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_the_model_ends_in_a_sigmoid_with_one_probability_per_finding(trained: Path) -> None:
    proto = onnx.load(str(trained / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.node[-1].op_type == "Sigmoid"
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 64, 64]
    with np.load(trained / "multilabel.npz") as d:
        x = preprocess()(d["test_images"][:37])
    p = _ort(trained / "model.onnx", x)
    assert p.shape == (37, 3) and np.all((p >= 0) & (p <= 1))


def test_thresholds_and_metrics_equal_an_independent_count(trained: Path) -> None:
    summary = json.loads((trained / "training.json").read_text())
    assert list(summary["findings"]) == list(finding_names(3))
    with np.load(trained / "multilabel.npz") as d:
        data = {s: (preprocess()(d[f"{s}_images"]), d[f"{s}_labels"]) for s in ("val", "test")}
    probs = {s: _ort(trained / "model.onnx", x).astype(np.float64) for s, (x, _) in data.items()}
    for i, (name, f) in enumerate(summary["findings"].items()):
        t = f["threshold"]["value"]
        p, y = probs["val"][:, i], data["val"][1][:, i]
        pos = p[y == 1]
        allowed = math.floor(0.05 * len(pos))
        assert (pos < t).sum() <= allowed and (pos >= t).mean() >= 0.95, name
        # the highest such threshold: any above the lowest caught positive misses too many
        assert (pos <= pos[pos >= t].min()).sum() > allowed, name
        for s, (_, labels) in data.items():
            p, y = probs[s][:, i], labels[:, i]
            m = f[s]
            assert m["n"] == len(y) and m["positives"] == int(y.sum())
            assert m["sensitivity"] == pytest.approx(np.mean(p[y == 1] >= t), abs=1e-12)
            assert m["specificity"] == pytest.approx(np.mean(p[y == 0] < t), abs=1e-12)
            assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6), (name, s)


def _config(trained: Path) -> dict[str, Any]:
    return tomllib.loads((trained / "packager.toml").read_text())


def test_the_written_config_carries_each_findings_threshold(trained: Path) -> None:
    cfg = _config(trained)
    summary = json.loads((trained / "training.json").read_text())
    labels = cfg["labels"]
    assert (labels["task"], labels["output"]) == ("multilabel", "probabilities")
    assert labels["names"] == list(finding_names(3))
    assert labels["thresholds"] == {
        n: f["threshold"]["value"] for n, f in summary["findings"].items()
    }
    assert "val split" in labels["threshold_rationale"]
    assert cfg["preprocess"]["channels"] == 1 and cfg["preprocess"]["size"] == 64
    assert (trained / cfg["data"]["path"]).resolve() == (trained / "multilabel.npz").resolve()
    assert (trained / cfg["model"]["path"]).is_file()


@pytest.mark.parametrize(
    "old, new, words",
    [
        (
            "[gates]\n",
            "[gates.findings.edema]\nmin_sensitivity = 0.9\n[gates]\n",
            "edema] names no",
        ),
        (
            "[labels.thresholds]\n",
            "[labels.thresholds]\nedema = 0.5\n",
            "thresholds.edema names no",
        ),
        ("\nbright = ", "\n# bright = ", "no threshold for ['bright']"),
        ("\npneumonia = ", "\npneumonia = 1.5 #", "thresholds.pneumonia = 1.5 must be between"),
        ('path = "multilabel.npz"', 'path = "other.npz"', "other.npz does not exist"),
    ],
)
def test_check_config_refuses_what_does_not_hold_together(
    trained: Path, tmp_path: Path, old: str, new: str, words: str
) -> None:
    for name in FILES:
        (tmp_path / name).write_bytes((trained / name).read_bytes())
    check_config(tmp_path / "packager.toml")  # the copy as written holds together
    text = (tmp_path / "packager.toml").read_text()
    assert text.count(old) == 1
    (tmp_path / "packager.toml").write_text(text.replace(old, new))
    with pytest.raises(UserError) as exc:  # packager's own parser, or the files' check
        check_config(tmp_path / "packager.toml")
    assert words in str(exc.value)


def test_a_second_run_reuses_the_cached_model(
    trained: Path, data_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PACKAGER_CACHE", str(trained.parents[1]))  # the fixture's cache
    before = {f: (trained / f).stat().st_mtime_ns for f in FILES}
    assert trained_model(data_path, SMOKE, Progress(False)) == trained
    assert {f: (trained / f).stat().st_mtime_ns for f in FILES} == before


def test_train_cli_bad_data_is_a_one_line_error(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "packager.example.multilabel.train",
            "--out",
            str(tmp_path),
            "--data",
            str(tmp_path / "no.npz"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "no.npz" in r.stderr


def densenet_params(channels: int, outputs: int) -> int:
    """DenseNet-121's parameter count by formula (growth 32, blocks 6/12/24/16, bottleneck 128,
    compression 0.5; a BatchNorm has 2 parameters per channel)."""
    total, c = 64 * channels * 7 * 7 + 2 * 64, 64
    for i, n in enumerate((6, 12, 24, 16)):
        for _ in range(n):
            total += 2 * c + c * 128 + 2 * 128 + 128 * 32 * 3 * 3
            c += 32
        if i < 3:
            total, c = total + 2 * c + c * (c // 2), c // 2
    return total + 2 * c + c * outputs + outputs


def test_densenet_has_densenet121s_size_and_14_probabilities(tmp_path: Path) -> None:
    # torchvision's densenet121() (3 channels, 1000 classes) has 7,978,856 parameters.
    assert densenet_params(3, 1000) == 7_978_856
    count = sum(p.numel() for p in make_densenet(14, 1).parameters())
    assert count == densenet_params(1, 14) and abs(count / 7.0e6 - 1) < 0.05
    path = write_densenet(tmp_path / "densenet.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 224, 224]
    x = np.random.default_rng(0).normal(size=(2, 1, 224, 224)).astype(np.float32)
    y = _ort(path, x)
    assert y.shape == (2, 14) and np.all((y >= 0) & (y <= 1))


def test_the_example_goes_through_all_targets(trained: Path, tmp_path: Path) -> None:
    """`packager build --all` on the example (the smoke-trained model, so gates may fail: the
    point is every target ending in a status with a reason), and every finding's sensitivity,
    specificity and AUC in each validated report.json recounted from validation.npz with numpy
    and scikit-learn."""
    import json
    import subprocess
    import sys

    from sklearn.metrics import roc_auc_score

    proc = subprocess.run(
        [sys.executable, "-m", "packager.cli", "build", "--config", str(trained / "packager.toml")]
        + ["--all", "--no-bench", "--json", "--out", str(tmp_path / "dist")],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    results = {r["target"]: r for r in json.loads(proc.stdout)["results"]}
    every = {"cpu-onnxruntime", "cpu-openvino", "edge-ort", "apple-coreml", "gpu-tensorrt"}
    assert set(results) == every
    assert all(r["status"] and r["reason"] for r in results.values()), results
    recounted = 0
    for path in (tmp_path / "dist").rglob("report.json"):
        report = json.loads(path.read_text())
        if not (report.get("clinical") or {}).get("findings"):
            continue
        with np.load(path.parent / "validation.npz") as z:
            labels, probs = z["labels"], z["probs"].astype(np.float64)
        names = json.loads((path.parent / "runtime.json").read_text())["labels"]
        for k, name in enumerate(names):
            f = report["clinical"]["findings"][name]
            y, d = labels[:, k] == 1, probs[:, k] >= f["threshold"]
            assert f["sensitivity"] == pytest.approx((y & d).sum() / y.sum(), abs=1e-12)
            assert f["specificity"] == pytest.approx((~y & ~d).sum() / (~y).sum(), abs=1e-12)
            assert f["auc"] == pytest.approx(roc_auc_score(y, probs[:, k]), abs=1e-12)
        recounted += 1
    assert recounted >= 3  # cpu-onnxruntime, cpu-openvino, edge-ort (Core ML: its proxy too)
