"""edge-ort: .ort conversion and operator config, mobile usability, INT8, the size gate, and the
image-bytes model, on tiny real classifiers, the real PneumoniaMNIST test split and real ONNX
Runtime (+ onnxruntime-extensions)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from packager.builder.session import Session
from packager.builder.stages import run_cross_checks
from packager.core.config import load_config
from packager.core.progress import Progress
from packager.core.registry import get
from packager.targets.edge_ort import IMAGE_MODEL, MODEL, Options
from tests.conftest import DEFAULT_TOML, Result, _run, assert_user_error, bundle_dir
from tests.test_recount import recount

BUNDLE = Path("dist/tiny-1.0.0/edge-ort")
EMBED = "\n[targets.edge-ort]\nembed_preprocessing = true\n"

extensions = pytest.importorskip("onnxruntime_extensions", reason="onnxruntime-extensions missing")


def _report(root: Path) -> dict:
    return json.loads((root / BUNDLE / "report.json").read_text())


def _published_or_failed(root: Path) -> tuple[dict, Path]:
    """The report and bundle, published or kept under dist/.failed/ when a gate failed."""
    bundle = bundle_dir(root, "edge-ort")
    return json.loads((bundle / "report.json").read_text()), bundle


@pytest.fixture(scope="module")
def test_labels(data_path: Path) -> np.ndarray:
    with np.load(data_path) as d:
        return d["test_labels"].reshape(-1).astype(np.int64)


def _check(report: dict, name: str) -> dict:
    return next(c for c in report["gates"]["checks"] if c["name"] == name)


def _session(path: Path, custom_ops: bool = False) -> ort.InferenceSession:
    so = ort.SessionOptions()
    if custom_ops:
        so.register_custom_ops_library(extensions.get_library_path())
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _encoded(image: np.ndarray, fmt: str, mode: str = "L") -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).convert(mode).save(buf, format=fmt, quality=95)
    return np.frombuffer(buf.getvalue(), np.uint8)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, data_path: Path) -> Path:
    """One FP32 build with the image model and a short benchmark, shared by several tests."""
    root = tmp_path_factory.mktemp("edge-embed")
    text = DEFAULT_TOML.format(model=tiny_model, data=data_path) + EMBED + "max_size_mb = 1.0\n"
    (root / "packager.toml").write_text(text)
    r = _run(["build", "-t", "edge-ort", "--json"], root)
    assert r.code == 0, r.stderr
    return root


def test_ort_loads_in_plain_onnxruntime_and_matches_the_source(
    embedded: Path, tiny_model: Path, data_path: Path
) -> None:
    bundle = embedded / BUNDLE
    report = _report(embedded)
    assert report["status"] == "passed" and report["precision"] == "fp32"
    assert report["clinical"]["flipped"] == []  # the reference's decisions, every test image
    with np.load(data_path) as npz:
        images = npz["test_images"]
    from tests.models import PRE

    x = PRE(images)
    ours = _session(bundle / MODEL).run(None, {"input": x})[0]
    source = _session(tiny_model).run(None, {"input": x})[0]
    assert np.abs(ours - source).max() < 1e-4
    assert (ours.argmax(1) == source.argmax(1)).all()


def test_bundle_ships_the_operator_config_and_usability_report(embedded: Path) -> None:
    bundle = embedded / BUNDLE
    config = (bundle / "required_operators.config").read_text()
    ops = {
        op
        for line in config.splitlines()
        if not line.startswith("#")
        for op in line.split(";")[2].split(",")
    }
    assert {"Gemm", "MaxPool"} <= ops and "/tmp" not in config  # reproducible header
    image_config = (bundle / "required_operators_image.config").read_text()
    assert "com.microsoft.extensions;1;DecodeImage" in image_config
    usability = _report(embedded)["details"]["mobile_usability"]
    for ep in ("NNAPI", "CoreML MLProgram", "CoreML NeuralNetwork"):
        assert usability[ep]["suitability"] in ("YES", "MAYBE", "NO")
        assert 0 <= usability[ep]["supported_nodes"] <= usability[ep]["nodes"]
    # the tiny model has a dynamic batch: NNAPI takes nothing until the shape is fixed
    assert usability["dynamic_inputs"] == ["input"]
    assert usability["NNAPI"]["supported_nodes"] == 0
    assert usability["NNAPI"]["if_input_shape_fixed"]["coverage"] == 1.0
    assert "NNAPI" in (bundle / "mobile_usability.txt").read_text()
    readme = (bundle / "README.md").read_text()
    for needle in (
        "OrtSession.SessionOptions",
        "ORTSession(",
        "--include_ops_by_config",
        "model_image.ort",
    ):
        assert needle in readme


def test_benchmark_runs_at_one_and_two_threads(embedded: Path) -> None:
    bench = _report(embedded)["benchmark"]
    assert bench["status"] == "ok"
    assert [v["label"] for v in bench["variants"]] == ["1 thread", "2 threads"]
    assert [v["runtime"]["threads"] for v in bench["variants"]] == [1, 2]
    assert bench["model_size_mb"] == pytest.approx(_report(embedded)["details"]["ort_size_mb"])


def test_image_model_agrees_with_the_tensor_model(embedded: Path) -> None:
    report = _report(embedded)
    check = _check(report, "image_model_agreement")
    assert check["passed"] and check["value"] == 1.0
    summary = json.loads((embedded / BUNDLE / "image_model_validation.json").read_text())
    assert summary["n"] == 624 and summary["differing_indices"] == []
    # upsampling 28 -> 32 in the graph matches preprocess.py (PIL, float) to float rounding
    assert summary["max_abs_diff_input_tensor"] < 1e-4
    assert _check(report, "max_size_mb[model_image.ort]")["passed"]


def test_image_model_takes_png_and_rgb_jpeg_and_refuses_grayscale_jpeg(
    embedded: Path, data_path: Path
) -> None:
    session = _session(embedded / BUNDLE / IMAGE_MODEL, custom_ops=True)
    with np.load(data_path) as npz:
        image = npz["test_images"][0]
    png = session.run(None, {"image": _encoded(image, "PNG")})[0]
    assert png.shape == (1, 2) and abs(float(png.sum()) - 1) < 1e-5  # probabilities
    rgb_jpeg = session.run(None, {"image": _encoded(image, "JPEG", "RGB")})[0]
    assert np.abs(rgb_jpeg - png).max() < 0.05  # lossy, but the same image
    # onnxruntime-extensions decodes grayscale JPEG scrambled into one channel: an error, not
    # a silently wrong probability
    with pytest.raises(Exception, match="Gather|out of"):
        session.run(None, {"image": _encoded(image, "JPEG", "L")})


def test_a_disagreement_lists_the_images_and_fails_the_gate(embedded: Path, tmp_path: Path) -> None:
    """On a copy: the cross-check writes image_model_validation.json into the bundle it runs on,
    and the shared bundle's own must stay as built (pytest-randomly found the other order)."""
    import shutil

    bundle = Path(shutil.copytree(embedded / BUNDLE, tmp_path / "bundle"))
    cfg = load_config(None, embedded)
    s = Session.open(cfg, Progress(False))
    ctx = s.context(Options(embed_preprocessing=True))
    with np.load(bundle / "validation.npz") as v:
        probs = v["probs"].astype(np.float64)
    probs[[3, 10]] = 1 - probs[[3, 10]]  # a tensor model that decides otherwise on two images
    options = json.loads((bundle / "runtime.json").read_text())["runner_options"]
    [check] = run_cross_checks(get("edge-ort"), ctx, bundle, options, probs)
    assert not check.passed and check.value == pytest.approx(622 / 624, abs=1e-6)
    assert "differ at indices [3, 10]" in check.reason


@pytest.mark.parametrize(
    ("name", "variant", "extra", "flags"),
    [
        ("opset11_softmax", {"opset": 11, "softmax": True}, "", ()),
        # --int8: static QDQ calibrated in batches of the model's fixed size
        (
            "nhwc_fixed4",
            {"layout": "NHWC", "batch": 4},
            'optimization_style = "runtime"\n',
            ("--int8",),
        ),
    ],
)
def test_models_from_other_sources(
    project: Callable[..., Path],
    cli: Callable[..., Result],
    make_model: Callable[..., Path],
    name: str,
    variant: dict,
    extra: str,
    flags: tuple[str, ...],
    test_labels: np.ndarray,
) -> None:
    root = project(EMBED + extra, model=make_model(name, **variant))
    r = cli("build", "-t", "edge-ort", "--no-bench", *flags, cwd=root)
    report, bundle = _published_or_failed(root)
    assert r.code == 0 and report["gates"]["passed"], r.stderr
    assert report["clinical"]["n"] == 624
    agreement = _check(report, "image_model_agreement")
    assert agreement["passed"], agreement
    d = report["details"]
    if flags:
        assert report["precision"] == "int8" and d["quantize"] == "static"
        assert d["size_vs_fp32"] == pytest.approx(
            d["ort_size_mb"] / d["fp32_ort_size_mb"], abs=1e-3
        )
        config = (bundle / "required_operators.config").read_text()
        assert "QuantizeLinear" in config or "QLinearConv" in config
        assert {"min_sensitivity", "max_sensitivity_drop"} <= {
            c["name"] for c in report["gates"]["checks"]
        }
        # Static INT8 keeps sensitivity on an independent recount of the shipped predictions.
        want = recount(bundle, test_labels)
        assert want["sensitivity"] >= 0.98 and want["sensitivity_drop"] <= 0.005, want
    else:
        assert report["status"] == "passed" and report["clinical"]["flipped"] == []
        assert report["clinical"]["output"] == "probabilities" and d["source_opset"] == 11
    replay = json.loads((bundle / "runtime.json").read_text())["runner_options"]["session_config"]
    assert replay == ({"session.enable_saved_runtime_optimizations": "1"} if extra else {})


def test_dynamic_int8_runs_and_the_size_gate_fails_the_build(
    project: Callable[..., Path], cli: Callable[..., Result], test_labels: np.ndarray
) -> None:
    root = project('\n[targets.edge-ort]\nquantize = "dynamic"\nmax_size_mb = 0.001\n')
    r = cli("build", "-t", "edge-ort", "--no-bench", cwd=root)
    assert r.code == 1, r.stderr
    report, bundle = _published_or_failed(root)
    assert ".failed" in str(bundle) and not (root / BUNDLE).exists()  # not published
    assert report["clinical"]["n"] == 624 and report["details"]["quantize"] == "dynamic"
    check = _check(report, "max_size_mb")
    assert report["status"] == "failed" and not check["passed"] and check["value"] > 0.001
    # Dynamic INT8 also costs this model sensitivity: the clinical gates that failed are
    # exactly those an independent recount of the kept predictions fails.
    want = recount(bundle, test_labels)
    expected = {"max_size_mb"} | {
        name
        for name, ok in (
            ("min_sensitivity", want["sensitivity"] >= 0.98),
            ("max_sensitivity_drop", want["sensitivity_drop"] <= 0.005),
        )
        if not ok
    }
    assert {c["name"] for c in report["gates"]["checks"] if not c["passed"]} == expected, want


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ('quantize = "int4"', ("quantize", "static")),
        ("max_size_mb = -1", ("max_size_mb",)),
        ('embed_preprocessing = "yes"', ("embed_preprocessing",)),
        ('optimisation_style = "fixed"', ("optimization_style",)),
    ],
)
def test_bad_options_are_one_line_errors(
    project: Callable[..., Path], cli: Callable[..., Result], extra: str, words: tuple[str, ...]
) -> None:
    root = project(f"\n[targets.edge-ort]\n{extra}\n")
    assert_user_error(cli("build", "-t", "edge-ort", cwd=root), *words)


def test_int8_of_a_float16_model_is_a_user_error(
    project: Callable[..., Path], cli: Callable[..., Result], make_model: Callable[..., Path]
) -> None:
    root = project(model=make_model("fp16", dtype="float16"))
    assert_user_error(cli("build", "-t", "edge-ort", "--int8", cwd=root), "float16", "float32")
