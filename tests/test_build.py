"""The spine end to end through the CLI, with the reference target on real ONNX Runtime."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from packager.shipped.preprocess import Preprocess
from tests.conftest import assert_user_error, run_predict

BUNDLE = Path("dist/tiny-1.0.0/cpu-onnxruntime")
CONTRACT_CLINICAL = {
    "n",
    "positives",
    "threshold",
    "sensitivity",
    "sensitivity_ci95",
    "specificity",
    "accuracy",
    "auc",
    "reference_sensitivity",
    "sensitivity_drop",
    "flipped",
    "max_abs_diff",
}


def test_build_publishes_a_complete_bundle(project, cli, tiny_model, data_path) -> None:
    root = project()
    r = cli("build", "--target", "cpu-onnxruntime", "--json", cwd=root)
    assert r.code == 0, r.stderr
    [result] = r.json["results"]
    assert result["status"] == "passed"
    bundle = root / BUNDLE
    for name in (
        "manifest.json",
        "report.json",
        "report.md",
        "report.html",
        "README.md",
        "predict.py",
        "preprocess.py",
        "preprocess.json",
        "runtime.json",
        "model.onnx",
    ):
        assert (bundle / name).is_file(), name
    assert (root / "dist/tiny-1.0.0/cpu-onnxruntime.tar.gz").is_file()
    report = json.loads((bundle / "report.json").read_text())
    assert report["schema_version"] == 1 and report["status"] == "passed"
    assert set(report["clinical"]) >= CONTRACT_CLINICAL
    bench = report["benchmark"]
    assert {"host", "load_time_ms", "peak_rss_mb", "model_size_mb", "batches"} <= set(bench)
    assert [b["batch_size"] for b in bench["batches"]] == [1, 8]
    assert set(bench["batches"][0]["latency_ms"]) == {
        "p50",
        "p90",
        "p95",
        "p99",
        "mean",
        "p50_ci95",  # bootstrapped over the measurement windows (docs/benchmarking.md)
        "p95_ci95",
    }
    assert report["gates"]["passed"] and report["clinical"]["flipped"] == []

    # Sensitivity equals an independent computation on the same predictions.
    with np.load(data_path) as d:
        images, labels = d["test_images"], d["test_labels"].reshape(-1)
    pre = Preprocess.from_json(bundle / "preprocess.json")
    logits = ort.InferenceSession(str(tiny_model)).run(None, {"input": pre(images)})[0]
    p = np.exp(logits[:, 1]) / np.exp(logits).sum(1)
    expected = ((p >= 0.2) & (labels == 1)).sum() / (labels == 1).sum()
    assert report["clinical"]["sensitivity"] == expected

    # The bundle's predict.py runs on an image file and agrees with the validated decision.
    line = run_predict(bundle, images[0], root)
    assert abs(line["probabilities"]["pneumonia"] - p[0]) < 1e-5
    assert (line["decision"] == "pneumonia") == (p[0] >= 0.2)

    # An identical build finds it up to date; other inputs never replace it silently.
    manifest = (bundle / "manifest.json").read_bytes()
    again = cli("build", "--target", "cpu-onnxruntime", "--json", cwd=root)
    assert again.code == 0 and again.json["results"][0]["reason"] == "up to date"
    assert (bundle / "manifest.json").read_bytes() == manifest
    with (root / "packager.toml").open("a") as f:
        f.write("\n[gates]\nmin_specificity = 0.0\n")
    assert_user_error(cli("build", "--target", "cpu-onnxruntime", cwd=root), "--force")


def test_gate_miss_exits_1_and_publishes_nothing(project, cli) -> None:
    root = project().joinpath("packager.toml")
    root.write_text(root.read_text().replace("threshold = 0.2", "threshold = 0.95"))
    r = cli("build", "--target", "cpu-onnxruntime", "--no-bench", cwd=root.parent)
    assert r.code == 1, r.stderr
    assert "min_sensitivity" in r.stderr and "Traceback" not in r.stderr
    assert not (root.parent / BUNDLE).exists()
    failed = root.parent / "dist/.failed/tiny-1.0.0/cpu-onnxruntime/report.json"
    assert json.loads(failed.read_text())["status"] == "failed"


def test_tarball_is_reproducible_and_verify_catches_one_byte(project, cli) -> None:
    root = project()
    tar = root / "dist/tiny-1.0.0/cpu-onnxruntime.tar.gz"
    # from scratch both times: a cached step is named in the report, by design
    assert cli("build", "-t", "cpu-onnxruntime", "--no-bench", "--no-cache", cwd=root).code == 0
    first = tar.read_bytes()
    again = cli("build", "-t", "cpu-onnxruntime", "--no-bench", "--force", "--no-cache", cwd=root)
    assert again.code == 0
    assert tar.read_bytes() == first
    assert cli("verify", tar, cwd=root).code == 0
    model = root / BUNDLE / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1
    model.write_bytes(bytes(data))
    r = cli("verify", root / BUNDLE, cwd=root)
    assert r.code == 1 and "changed: model.onnx" in r.stdout


def test_inspect_and_targets_json(cli, tiny_model, tmp_path) -> None:
    r = cli("inspect", tiny_model, "--json", cwd=tmp_path)
    assert r.code == 0 and r.json["macs_per_sample"] > 0 and r.json["batch"] == "dynamic"
    r = cli("targets", "--json", cwd=tmp_path)
    assert r.code == 0
    ref = next(t for t in r.json["targets"] if t["name"] == "cpu-onnxruntime")
    assert ref["build"]["ok"] and ref["validate"]["ok"]


def test_usage_errors_are_one_line(project, cli, tmp_path) -> None:
    root = project()
    assert_user_error(cli("build", cwd=root), "--target")
    assert_user_error(cli("build", "-t", "cpu-onnxruntim", cwd=root), "cpu-onnxruntime")
    assert_user_error(
        cli("build", "-t", "cpu-onnxruntime", "--model", tmp_path / "no.onnx", cwd=root),
        "does not exist",
    )
