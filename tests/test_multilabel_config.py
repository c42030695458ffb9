"""Multi-label configuration, data and the builds that need no shared bundle (issue 30): per
finding thresholds and gates, refusals in one line, (N, K) npz and labels.csv data, a gate on one
finding failing the build, sigmoid logits, the inferred task and inspect. The shared 3-target
bundles are tests/test_multilabel.py's."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tomllib

from packager.core.config import parse_config
from packager.core.data import load_dataset
from packager.core.errors import UserError
from tests import multilabel_fixture
from tests.conftest import Result, assert_user_error
from tests.multilabel_fixture import (
    FINDINGS,
    NAME,
    build,
    config_text,
    features,
    write_model,
)

project = multilabel_fixture.project  # the module fixture: model, data, packager.toml


def test_a_gate_on_one_finding_fails_naming_it(project: Path, tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    for f in ("model.onnx", "findings.npz"):
        (root / f).symlink_to(project / f)
    text = config_text(root / "model.onnx", root / "findings.npz")
    (root / "packager.toml").write_text(
        text + "\n[gates.findings.bright]\nmin_specificity = 0.999\n"
        "[gates.findings.upper]\nmin_finding_positives = 10000\n"
    )
    r = build(root, root / "dist", "-t", "cpu-onnxruntime")
    assert r.code == 1, r.stderr[-2000:]
    assert "min_specificity[finding=bright]" in r.stderr
    report = json.loads(
        (root / "dist" / ".failed" / NAME / "cpu-onnxruntime" / "report.json").read_text()
    )
    gates = {c["name"]: c for c in report["gates"]["checks"]}
    assert gates["min_specificity[finding=bright]"]["status"] == "failed"
    assert "min_specificity[finding=upper]" not in gates  # the override is bright's alone
    # too few positives for upper's own limit: insufficient evidence, never a pass
    with np.load(root / "findings.npz") as z:
        upper = int(z["test_labels"][:, FINDINGS.index("upper")].sum())
    line = gates["min_finding_positives[finding=upper]"]
    assert (line["value"], line["limit"], line["verdict"]) == (
        upper,
        10000,
        "insufficient evidence",
    )
    assert line["status"] == "failed" and "add positives" in line["reason"]
    assert gates["min_finding_positives[finding=bright]"]["verdict"] == "pass"
    assert not (root / "dist" / NAME / "cpu-onnxruntime").exists()


# --- configuration and data (no build) --------------------------------------------------------


def _cfg(text: str):
    return parse_config(tomllib.loads(text), Path.cwd())


ML = '[labels]\ntask = "multilabel"\nnames = ["a", "b", "c"]\n'


def test_per_finding_thresholds_and_gates() -> None:
    cfg = _cfg(
        ML + "threshold = 0.4\n[labels.thresholds]\nb = 0.3\n[gates]\nmin_sensitivity = 0.9\n"
        "[gates.findings.b]\nmin_sensitivity = 0.95\n"
    )
    assert cfg.labels.operating_points() == ([0, 1, 2], [0.4, 0.3, 0.4])
    assert cfg.gates.for_finding("b").min_sensitivity == 0.95
    assert cfg.gates.for_finding("a").min_sensitivity == 0.9


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("[labels.thresholds]\nz = 0.3\n", ["thresholds.z", "names no finding"]),
        ("[labels.thresholds]\nb = 1.5\n", ["thresholds.b", "between 0 and 1"]),
        ("[gates.findings.z]\nmin_sensitivity = 0.9\n", ["gates.findings.z", "names no finding"]),
        ("[gates.findings.b]\nmin_sensitivty = 0.9\n", ["min_sensitivty", "min_sensitivity"]),
        ("[gates.findings.b]\nmin_sensitivity = 95\n", ["gates.findings.b", "fraction"]),
        ("[gates.findings.b]\ncustom = {}\n", ["custom", "whole model"]),
        ("[gates.classes.b]\nmin_sensitivity = 0.9\n", ["gates.classes", "gates.findings"]),
    ],
)
def test_bad_multilabel_config_is_one_line(extra: str, words: list[str]) -> None:
    with pytest.raises(UserError) as e:
        _cfg(ML + extra)
    for w in words:
        assert w in str(e.value), str(e.value)


def _npz(path: Path, labels: np.ndarray) -> Path:
    images = np.zeros((len(labels), 4, 4), np.uint8)
    np.savez(path, test_images=images, test_labels=labels)
    return path


def test_npz_findings_load_and_bad_values_name_the_row(tmp_path: Path) -> None:
    y = np.array([[0, 1, 1], [1, 0, 0]])
    ds = load_dataset(_npz(tmp_path / "ok.npz", y), "test", ["a", "b", "c"], task="infer")
    assert ds.labels.shape == (2, 3) and (ds.labels == y).all()
    bad = np.array([[0, 1, 1], [1, 2, 0]])
    with pytest.raises(UserError, match=r"row 1: finding 'b' is 2"):
        load_dataset(_npz(tmp_path / "bad.npz", bad), "test", ["a", "b", "c"], task="multilabel")
    with pytest.raises(UserError, match=r"\(N, 3\)"):
        load_dataset(
            _npz(tmp_path / "one.npz", y[:, 0]), "test", ["a", "b", "c"], task="multilabel"
        )


def test_labels_csv_findings(tmp_path: Path) -> None:
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((4, 4), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,a,b,c\n0.png,1,0,0\n1.png,0,1,1\n2.png,0,0,0\n")
    ds = load_dataset(tmp_path, "test", ["a", "b", "c"], task="infer")
    assert ds.labels.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    csv.write_text("path,a,b,c\n0.png,1,0,0\n1.png,0,,1\n2.png,0,0,0\n")
    with pytest.raises(UserError, match=r"line 3: finding 'b' is ''"):
        load_dataset(tmp_path, "test", ["a", "b", "c"], task="multilabel")
    csv.write_text("path,a,b,c\n0.png,1,0,0\n1.png,0,0.5,1\n2.png,0,0,0\n")
    with pytest.raises(UserError, match=r"line 3: finding 'b' is '0.5'"):
        load_dataset(tmp_path, "test", ["a", "b", "c"], task="multilabel")


def test_class_folders_refused_for_multilabel(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(UserError, match="labels.csv"):
        load_dataset(tmp_path, "test", ["a", "b"], task="multilabel")


def test_sigmoid_logits(project: Path, tmp_path: Path, cli: Callable[..., Result]) -> None:
    """A multi-label model ending in logits: packager applies a sigmoid per finding (never a
    softmax): the reference probabilities equal numpy's sigmoid of the raw outputs."""
    import onnxruntime as ort

    with np.load(project / "findings.npz") as z:
        medians = np.median(_features(z["train_images"]), axis=0)
    model = write_model(tmp_path / "logits.onnx", medians, logits=True)
    (tmp_path / "packager.toml").write_text(
        config_text(model, project / "findings.npz") + "\n[labels.thresholds]\nleft = 0.4\n"
    )
    r = build(tmp_path, tmp_path / "dist", "-t", "cpu-onnxruntime")
    assert r.code == 0, r.stderr[-2000:]
    b = tmp_path / "dist" / NAME / "cpu-onnxruntime"
    assert json.loads((b / "runtime.json").read_text())["output"] == "sigmoid-logits"
    with np.load(b / "validation.npz") as z:
        probs = z["probs"]
    from packager.shipped.preprocess import Preprocess

    pre = Preprocess.from_json(b / "preprocess.json")
    with np.load(project / "findings.npz") as z:
        x = pre(z["test_images"])
    raw = ort.InferenceSession(str(model)).run(None, {"input": x})[0].astype(np.float64)
    assert np.abs(probs - 1 / (1 + np.exp(-raw))).max() < 1e-6
    report = json.loads((b / "report.json").read_text())
    assert report["clinical"]["findings"]["left"]["threshold"] == 0.4


def _features(images: np.ndarray) -> np.ndarray:
    return features(images)


def test_inspect_states_the_task(project: Path, cli: Callable[..., Result], tmp_path: Path) -> None:
    r = cli("inspect", project / "model.onnx", cwd=tmp_path)
    assert r.code == 0, r.stderr
    assert "(ends in Sigmoid)" in r.stdout
    assert "task       multilabel (3 outputs, each through its own Sigmoid)" in r.stdout


def test_task_inferred_only_for_a_sigmoid_model(project: Path, tmp_path: Path) -> None:
    """No [labels] task: (N, 3) 0/1 labels and a model ending in a Sigmoid build as multilabel;
    the same data for a logits model is refused in one line, naming the fix (one-hot labels of
    a softmax model look the same: packager does not guess)."""
    text = config_text(project / "model.onnx", project / "findings.npz")
    (tmp_path / "packager.toml").write_text(text.replace('task = "multilabel"\n', ""))
    r = build(tmp_path, tmp_path / "dist", "-t", "cpu-onnxruntime")
    assert r.code == 0, r.stderr[-2000:]
    runtime = json.loads(
        (tmp_path / "dist" / NAME / "cpu-onnxruntime" / "runtime.json").read_text()
    )
    assert runtime["task"] == "multilabel"
    with np.load(project / "findings.npz") as z:
        medians = np.median(_features(z["train_images"]), axis=0)
    logits = write_model(tmp_path / "logits.onnx", medians, logits=True)
    text = config_text(logits, project / "findings.npz").replace('task = "multilabel"\n', "")
    (tmp_path / "packager.toml").write_text(text)
    r = build(tmp_path, tmp_path / "dist2", "-t", "cpu-onnxruntime")
    assert_user_error(r, "(N, 3) 0/1 findings for a multi-label model", 'task = "multilabel"')
    assert not (tmp_path / "dist2").exists() or not any((tmp_path / "dist2").rglob("*.tar.gz"))
