"""apple-coreml: real conversions of the tiny classifiers with coremltools, the .mlpackage read
back, the translation gate, the proxy on Linux, and Core ML itself where this is a Mac."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from packager.builder.verify import verify
from packager.shipped.preprocess import Preprocess
from packager.targets.apple_coreml import NOT_MAC, AppleCoreML, image_scale_bias, read_spec
from packager.targets.apple_coreml.runtime import as_scores
from tests.conftest import DEFAULT_TOML, Result, _run, assert_user_error, run_predict

pytest.importorskip("coremltools", reason="pip install 'packager[coreml]'")
pytest.importorskip("torch", reason="pip install 'packager[coreml]'")

TARGET = AppleCoreML()
ON_MAC = TARGET.availability().validate.ok
MAC_ONLY = pytest.mark.skipif(not ON_MAC, reason=TARGET.availability().validate.reason)


def build(folder: Path, model: Path, data: Path, extra: str = "") -> tuple[Result, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "packager.toml").write_text(DEFAULT_TOML.format(model=model, data=data) + extra)
    r = _run(["build", "--target", "apple-coreml", "--json", "-q"], folder)
    return r, folder / "dist" / "tiny-1.0.0" / "apple-coreml"


@pytest.fixture(scope="module")
def default_bundle(default_build: Callable[[str], tuple[Path, Result]]) -> tuple[Result, Path]:
    """The session's build with the defaults (FP16, image input, classifier), shared with
    the generic recount (tests/test_recount.py)."""
    root, r = default_build("apple-coreml")
    return r, root / "dist" / "tiny-1.0.0" / "apple-coreml"


def test_mlpackage_is_normalised_for_reproducible_tarballs(
    default_bundle: tuple[Result, Path],
) -> None:
    # coremltools writes random package identifiers, the date and hash-ordered maps; the
    # target rewrites them (tests/test_reproducible.py rebuilds and compares the bytes).
    r, bundle = default_bundle
    assert r.code == 0, r.stderr
    package = json.loads((bundle / "model.mlpackage" / "Manifest.json").read_text())
    assert package["rootModelIdentifier"] in package["itemInfoEntries"]
    assert "conversion_date" not in json.dumps(read_spec(bundle / "model.mlpackage"))


def test_availability_states_why_core_ml_cannot_run_here() -> None:
    a = TARGET.availability()
    assert a.build.ok
    if sys.platform == "linux":
        assert not a.validate.ok and not a.bench.ok
        assert a.validate.reason == NOT_MAC.format(system="Linux")
        assert TARGET.proxy({}) is not None


def test_default_build_is_not_validated_with_the_reason_and_a_passing_proxy(
    default_bundle: tuple[Result, Path],
) -> None:
    r, bundle = default_bundle
    assert r.code == 0, r.stderr
    report = json.loads((bundle / "report.json").read_text())
    checks = {c["name"]: c for c in report["gates"]["checks"]}
    for name in (
        "translation_max_abs_diff",
        "translation_flipped",
        "coreml_spec_io",
        "coreml_spec_metadata",
        "coreml_spec_weights",
        "min_sensitivity",
    ):
        assert checks[name]["passed"], checks[name]
    assert checks["translation_flipped"]["value"] == 0
    assert checks["translation_max_abs_diff"]["value"] < 1e-4
    if ON_MAC:
        assert report["status"] == "passed"
        assert report["validation"]["runtime"]["runtime"] == "coreml"
    else:
        assert report["status"] == "not-validated"
        assert "Core ML predictions need macOS" in report["reason"]
        assert report["validation"]["runtime"]["runtime"] == "torch"
        assert "intermediate PyTorch module" in report["validation"]["proxy"]
        assert report["benchmark"]["status"] == "skipped"
        assert "macOS" in (bundle / "README.md").read_text()
    assert report["clinical"]["flipped"] == []  # the proxy decides as the reference does
    assert verify(bundle).ok


def test_mlpackage_spec_declares_image_input_classifier_and_metadata(
    default_bundle: tuple[Result, Path],
) -> None:
    _, bundle = default_bundle
    spec = read_spec(bundle / "model.mlpackage")  # read again, independently of the build
    assert spec["type"] == "mlProgram"
    assert spec["specification_version"] >= 7  # iOS16
    assert spec["inputs"] == [
        {"name": "image", "type": "imageType", "size": [32, 32], "color": "RGB"}
    ]
    assert sorted(o["name"] for o in spec["outputs"]) == ["classLabel", "classLabel_probs"]
    assert spec["classes"] == ["normal", "pneumonia"]
    user = spec["metadata"]["user"]
    assert user["threshold"] == "0.2" and user["positive_class"] == "pneumonia"
    assert json.loads(user["preprocess"])["std"] == [0.5]
    assert "0.2" in spec["metadata"]["short_description"]
    assert spec["metadata"]["version"] == "1.0.0"
    assert set(spec["weight_types"]) == {"FLOAT16"}
    assert spec["ops"]["conv"] == 2 and spec["ops"]["classify"] == 1
    readme = (bundle / "README.md").read_text()
    assert "VNCoreMLRequest" in readme and "p >= 0.2" in readme


@pytest.mark.slow
def test_multiarray_flexible_batch_fp32(
    tmp_path: Path, make_model: Callable[..., Path], data_path: Path
) -> None:
    extra = (
        '[targets.apple-coreml]\nprecision = "fp32"\nimage_input = false\n'
        "classifier = false\nmax_batch = 16\n"
    )
    r, bundle = build(tmp_path, make_model(), data_path, extra)
    assert r.code == 0, r.stderr
    spec = read_spec(bundle / "model.mlpackage")
    (inp,) = spec["inputs"]
    assert inp["type"] == "multiArrayType" and inp["ranges"][0] == [1, 16]
    assert [o["name"] for o in spec["outputs"]] == ["scores"]
    assert set(spec["weight_types"]) == {"FLOAT32"}
    assert "classify" not in spec["ops"]
    report = json.loads((bundle / "report.json").read_text())
    assert report["details"]["batch"] == "flexible 1..16"
    assert report["gates"]["passed"]


@pytest.mark.slow
def test_nhwc_model_keeps_an_image_input(
    tmp_path: Path, make_model: Callable[..., Path], data_path: Path
) -> None:
    r, bundle = build(tmp_path, make_model("tiny-nhwc", layout="NHWC"), data_path)
    assert r.code == 0, r.stderr
    spec = read_spec(bundle / "model.mlpackage")
    assert spec["inputs"] == [
        {"name": "image", "type": "imageType", "size": [32, 32], "color": "RGB"}
    ]
    report = json.loads((bundle / "report.json").read_text())
    assert report["gates"]["passed"] and report["clinical"]["flipped"] == []


def test_translation_gate_is_live_and_per_channel_std_falls_back(
    tmp_path: Path, make_model: Callable[..., Path], data_path: Path
) -> None:
    """An impossible tolerance must fail the build (a gate miss is never a warning); the same
    build shows a per-channel std keeping the input a multiarray."""
    extra = (
        "[preprocess]\nstd = [0.5, 0.5, 0.49]\n[targets.apple-coreml]\ntranslation_atol = 1e-12\n"
    )
    r, bundle = build(tmp_path, make_model(), data_path, extra)
    assert r.code == 1, r.stderr
    assert not bundle.exists()
    failed = tmp_path / "dist" / ".failed" / "tiny-1.0.0" / "apple-coreml"
    report = json.loads((failed / "report.json").read_text())
    assert report["status"] == "failed"
    assert "translation_max_abs_diff" in report["reason"]
    checks = {c["name"]: c for c in report["gates"]["checks"]}
    assert checks["translation_flipped"]["passed"]  # decisions still agree
    assert report["details"]["input"] == "multiarray"
    assert any("differs per channel" in n for n in report["notes"])
    assert read_spec(failed / "model.mlpackage")["inputs"][0]["type"] == "multiArrayType"


def test_unsupported_operator_is_refused_by_name(tmp_path: Path, data_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "W"], ["g"]),
        helper.make_node("Einsum", ["g"], ["output"], equation="ij->ij"),
    ]
    g = helper.make_graph(
        nodes,
        "einsum",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.ones((3, 2), np.float32), "W")],
    )
    model = tmp_path / "einsum.onnx"
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(model))
    r, bundle = build(tmp_path, model, data_path)
    # The target's result, not a crash: exit 4, one line, the operator named, nothing published.
    assert r.code == 4, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    (res,) = r.json["results"]
    assert res["status"] == "unsupported-model" and "Einsum" in res["reason"]
    assert "Core ML" in res["reason"] and not bundle.exists()


def test_unknown_option_and_bad_values_are_user_errors(
    tmp_path: Path, make_model: Callable[..., Path], data_path: Path
) -> None:
    r, _ = build(tmp_path, make_model(), data_path, '[targets.apple-coreml]\nprecison = "fp16"\n')
    assert_user_error(r, "precison", "precision")
    r, _ = build(
        tmp_path,
        make_model(),
        data_path,
        '[targets.apple-coreml]\nminimum_deployment_target = "iOS14"\n',
    )
    assert_user_error(r, "minimum_deployment_target")


@pytest.mark.skipif(ON_MAC, reason="checks the message shown where Core ML cannot run")
def test_validate_elsewhere_than_macos_exits_3_with_the_reason(
    default_bundle: tuple[Result, Path], data_path: Path
) -> None:
    _, bundle = default_bundle
    r = _run(["validate", str(bundle), "--data", str(data_path)], bundle)
    assert r.code == 3
    assert "Core ML predictions need macOS" in r.stderr and "Traceback" not in r.stderr


def test_log_probabilities_stand_in_for_logits() -> None:
    p = np.array([[0.9, 0.1], [1e-12, 1.0 - 1e-12], [0.0, 1.0]], np.float32)
    opts = {"softmax": True, "scores": "logits"}
    s = as_scores(p, opts)
    assert np.isfinite(s).all()
    back = np.exp(s - s.max(1, keepdims=True))
    back /= back.sum(1, keepdims=True)
    np.testing.assert_allclose(back, p, atol=1e-6)
    np.testing.assert_array_equal(as_scores(p, {"softmax": False, "scores": "logits"}), p)
    np.testing.assert_array_equal(as_scores(p, {"softmax": True, "scores": "probabilities"}), p)


def test_image_scale_bias_reproduces_preprocess() -> None:
    pre = Preprocess(
        size=4,
        channels=3,
        layout="NCHW",
        scale=1 / 255,
        mean=(0.2, 0.4, 0.6),
        std=(0.25,),
        dtype="float32",
    )
    scale, bias = image_scale_bias(pre)
    pixels = np.arange(48, dtype=np.uint8).reshape(1, 4, 4, 3) * 5
    coreml = (
        pixels.astype(np.float32).transpose(0, 3, 1, 2) * scale
        + np.array(bias, np.float32)[None, :, None, None]
    )
    np.testing.assert_allclose(coreml, pre(pixels), atol=1e-6)


def test_bench_variants_cover_the_other_compute_units() -> None:
    labels = [label for label, _ in TARGET.bench_variants({"compute_units": "CPU_AND_NE"})]
    assert labels == ["compute units ALL", "compute units CPU_ONLY"]


@MAC_ONLY
def test_core_ml_predictions_on_macos(
    default_bundle: tuple[Result, Path], data_path: Path, tmp_path: Path
) -> None:
    """On a Mac the build validated on Core ML itself; a second validation completes in place."""
    _, bundle = default_bundle
    report = json.loads((bundle / "report.json").read_text())
    assert report["status"] == "passed", report["reason"]
    r = _run(["validate", str(bundle), "--data", str(data_path), "--json"], bundle)
    assert r.code == 0, r.stderr
    assert r.json["validation"]["runtime"]["runtime"] == "coreml"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["validated_by"]["runtime"]["runtime"] == "coreml"
    assert manifest["validated_by"]["host"]["os"].startswith("Darwin")
    with np.load(data_path) as npz:
        line = run_predict(bundle, npz["test_images"][0], tmp_path)
    assert set(line["probabilities"]) == {"normal", "pneumonia"} and line["threshold"] == 0.2


def gray_model(path: Path) -> Path:
    """A 1-channel classifier (random weights: only the conversion is under test here)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "W", "B"], ["output"], transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "gray",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 2])],
        [
            numpy_helper.from_array(rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.normal(0, 0.5, (2, 4)).astype(np.float32), "W"),
            numpy_helper.from_array(np.zeros(2, np.float32), "B"),
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8  # what the installed ONNX Runtime reads
    onnx.save(m, str(path))
    return path


@pytest.mark.slow
def test_grayscale_model_gets_a_grayscale_image_input(tmp_path: Path, data_path: Path) -> None:
    """The conversion alone, in process: spec checks and the translation check must pass."""
    from packager.builder.session import Session
    from packager.core.config import parse_config
    from packager.core.progress import Progress
    from packager.core.schema import from_dict
    from packager.targets.apple_coreml import Options

    model = gray_model(tmp_path / "gray.onnx")
    cfg = parse_config({"model": {"path": str(model)}, "data": {"path": str(data_path)}}, tmp_path)
    s = Session.open(cfg, Progress(False))
    opts = from_dict(Options, {"precision": "fp32"}, "targets.apple-coreml")
    ctx = s.context(opts)
    stage = tmp_path / "stage"
    stage.mkdir()
    built = TARGET.build(ctx, stage)
    assert all(c.passed for c in built.checks), [c for c in built.checks if not c.passed]
    assert built.details["spec"]["inputs"] == [
        {"name": "image", "type": "imageType", "size": [32, 32], "color": "GRAYSCALE"}
    ]
    assert built.details["image_scale_bias"] == (2 / 255, [-1.0])
