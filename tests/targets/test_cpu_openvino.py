"""cpu-openvino on real OpenVINO and NNCF with tiny real models: conversion, pinned precision,
INT8 (post-training and accuracy-controlled on sensitivity), gates, serving repository."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DEFAULT_TOML, Result, _run, assert_user_error, run_predict
from tests.test_recount import recount

ov = pytest.importorskip("openvino", reason="needs openvino (pip install 'packager[openvino]')")
pytest.importorskip("nncf", reason="needs nncf (pip install 'packager[openvino]')")

from packager.convert.triton import check_repository, parse_config  # noqa: E402
from packager.runtime.runner import ModuleRunner  # noqa: E402
from packager.targets.cpu_openvino import cpu_facts  # noqa: E402

TARGET = "cpu-openvino"
BUNDLE = Path("dist/tiny-1.0.0/cpu-openvino")
# The tiny model's INT8 raises p(pneumonia), so it loses sensitivity for the class "normal":
# a real case of a quantized model failing the gate the float one passes.
NORMAL_IS_POSITIVE = """
[labels]
names = ["normal", "pneumonia"]
positive = "normal"
threshold = 0.5
[gates]
min_sensitivity = 0.5
"""


def _toml(model: Path, data: Path, extra: str) -> str:
    text = DEFAULT_TOML.format(model=model, data=data)
    if "[labels]" in extra:  # the extra table replaces the default one
        text = re.sub(r"\[labels\]\nthreshold = 0\.2\n", "", text)
    return text + extra


@pytest.fixture(scope="module")
def build(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    data_path: Path,
    default_build: Callable[[str], tuple[Path, Result]],
) -> Callable[..., tuple[Path, Result]]:
    """build(extra_toml, *flags) -> (project folder, CLI result); each config is built once,
    the defaults by the session without benchmarks (shared with the generic recount)."""
    done: dict[tuple[str, ...], tuple[Path, Result]] = {}

    def run(extra: str = "", *flags: str, model: Path | None = None) -> tuple[Path, Result]:
        key = (extra, str(model), *flags)
        if not extra and not flags and model is None and key not in done:
            done[key] = default_build(TARGET)
        if key not in done:
            root = tmp_path_factory.mktemp("ov")
            (root / "packager.toml").write_text(_toml(model or tiny_model, data_path, extra))
            done[key] = (root, _run(["build", "-t", TARGET, *flags], root))
        return done[key]

    return run


def ir_int8_layers(xml: Path) -> dict[str, bool]:
    """For each Convolution/MatMul of the IR, read with OpenVINO: does its activation input
    come from a FakeQuantize (INT8), or from float computation? Walks up through reshapes,
    pooling and activations until a FakeQuantize, another such layer or the input."""
    model = ov.Core().read_model(str(xml))
    out = {}
    for op in model.get_ops():
        if op.get_type_name() not in ("Convolution", "MatMul"):
            continue
        node = op.input_value(0).get_node()
        while node.get_type_name() not in ("FakeQuantize", "Convolution", "MatMul", "Parameter"):
            node = node.input_value(0).get_node()
        out[op.get_friendly_name()] = node.get_type_name() == "FakeQuantize"
    return out


def compiled_precisions(xml: Path) -> dict[str, str]:
    """Runtime precision of each layer OpenVINO's CPU plugin compiled, by original name."""
    core = ov.Core()
    compiled = core.compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in ("Convolution", "FullyConnected"):
            for name in info["originalLayersNames"].astype(str).split(","):
                out[name] = info["runtimePrecision"].astype(str)
    return out


def assert_layers_as_reported(bundle: Path, layers: dict[str, list[str]]) -> None:
    """The report's INT8 and float layer lists against the shipped IR and its compilation."""
    ir, compiled = ir_int8_layers(bundle / "model.xml"), compiled_precisions(bundle / "model.xml")
    assert set(layers["int8"]) | set(layers["float"]) == set(ir), (layers, ir)
    for name in layers["int8"]:
        assert ir[name], f"{name} is reported INT8 but the IR feeds it float"
        assert compiled.get(name, "u8") in ("u8", "i8"), (name, compiled)
    for name in layers["float"]:
        assert not ir[name], f"{name} is reported float but the IR quantizes its input"
        assert compiled.get(name, "f32") == "f32", (name, compiled)


@pytest.fixture(scope="module")
def test_labels(data_path: Path) -> np.ndarray:
    with np.load(data_path) as d:
        return d["test_labels"].reshape(-1).astype(np.int64)


def report_of(root: Path, failed: bool = False) -> dict:
    base = root / "dist/.failed/tiny-1.0.0/cpu-openvino" if failed else root / BUNDLE
    return json.loads((base / "report.json").read_text())


def test_registered_and_available_here(cli, tmp_path) -> None:
    r = cli("targets", "--json", cwd=tmp_path)
    assert r.code == 0, r.stderr
    entry = next(t for t in r.json["targets"] if t["name"] == TARGET)
    assert entry["build"]["ok"] and entry["validate"]["ok"] and entry["bench"]["ok"], entry
    assert {o["key"] for o in entry["options"]} >= {"precision", "int8_mode", "control_split"}


def test_fp32_reproduces_the_reference_and_pins_f32(build) -> None:
    root, r = build()
    assert r.code == 0, r.stderr
    report = report_of(root)
    assert report["status"] == "passed" and report["precision"] == "fp32"
    clin = report["clinical"]
    assert clin["flipped"] == [] and clin["max_abs_diff"] < 1e-4
    # Pinned in runtime.json, and read back from the compiled model during validation.
    runtime = json.loads((root / BUNDLE / "runtime.json").read_text())
    assert runtime["runner_options"]["inference_precision"] == "f32"
    compiled = report["validation"]["runtime"]["latency_mode"]
    assert compiled["inference_precision"] == "f32"
    assert compiled["layer_precisions"] and all(
        k.endswith(":f32") for k in compiled["layer_precisions"]
    )
    # The report names what OpenVINO would have picked here without the pin.
    default = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    assert report["details"]["inference_precision"]["openvino_default_on_build_host"] == default
    assert any("default on the build host" in n and default in n for n in report["notes"])


def test_pin_is_applied_by_runner_and_predict_py(build, data_path, tiny_model) -> None:
    root, r = build()
    assert r.code == 0, r.stderr
    bundle = root / BUNDLE
    with np.load(data_path) as d:
        images = d["test_images"][:16]
    from packager.shipped.preprocess import Preprocess

    x = Preprocess.from_json(bundle / "preprocess.json")(images)
    options = {"model": "model.xml", "inference_precision": "f32"}
    with ModuleRunner(bundle, bundle, options) as runner:  # the bundle's own runtime.py
        pinned = runner.infer(x)
    ref = ov.Core().compile_model(str(tiny_model), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert np.allclose(pinned, ref(x)[0], atol=1e-5)
    if cpu_facts()["default_inference_precision"] != "f32":
        # Unpinned, OpenVINO computes differently on this host: the pin is what makes it f32.
        unpinned = ov.Core().compile_model(str(bundle / "model.xml"), "CPU")(x)[0]
        assert not np.allclose(unpinned, pinned, atol=1e-6)
    # predict.py applies the same pin and reproduces the validated probability.
    probs = np.load(bundle / "validation.npz")["probs"]
    got = run_predict(bundle, images[3], root)["probabilities"]["pneumonia"]
    assert abs(got - probs[3, 1]) < 1e-6


def test_bench_reports_latency_and_throughput_modes(
    benched_build: Callable[[str], tuple[Path, Result]],
) -> None:
    root, r = benched_build(TARGET)  # the session's benchmarked build (default_build is not)
    assert r.code == 0, r.stderr
    bench = report_of(root)["benchmark"]
    assert bench["status"] == "ok"
    assert all(b["throughput_mode"] == "async" for b in bench["batches"])
    assert bench["runtime"]["latency_mode"]["performance_hint"] == "LATENCY"
    tput = bench["runtime"]["throughput_mode"]
    assert tput["performance_hint"] == "THROUGHPUT" and tput["optimal_requests"] >= 1
    assert [v["label"].split()[0] for v in bench["variants"]] == ["LATENCY", "THROUGHPUT"]
    for v in bench["variants"]:
        assert [b["batch_size"] for b in v["batches"]] == [1, 8]
    # OpenVINO's own timer on the same calls (what benchmark_app reports) sits under the
    # wall clock of each call, and the report states the harness's share.
    for row in bench["batches"]:
        inner, wall = row["runtime_latency_ms"], row["latency_ms"]
        assert 0 < inner["p50"] <= wall["p50"] and inner["p99"] <= wall["p99"]
    assert "On the runtime's own clock" in (root / BUNDLE / "report.md").read_text()


def test_triton_repository_and_ovms_config(build) -> None:
    root, r = build()
    assert r.code == 0, r.stderr
    bundle = root / BUNDLE
    assert check_repository(bundle / "triton") == []
    cfg = parse_config(bundle / "triton/tiny/config.pbtxt")
    assert cfg.backend == "openvino" and cfg.max_batch_size == 0
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("input", [-1, 3, 32, 32])]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("output", [-1, 2])]
    assert cfg.parameters["PERFORMANCE_HINT"].string_value == "LATENCY"
    for f in ("model.xml", "model.bin"):
        assert (bundle / "triton/tiny/1" / f).read_bytes() == (bundle / f).read_bytes()
    ovms = json.loads((bundle / "ovms_config.json").read_text())
    [entry] = ovms["model_config_list"]
    assert entry["config"]["base_path"] == "/models/tiny"
    assert entry["config"]["plugin_config"]["INFERENCE_PRECISION_HINT"] == "f32"
    readme = (bundle / "README.md").read_text()
    assert "tritonserver --model-repository" in readme and "openvino/model_server" in readme


def test_fp16_compresses_weights_and_computes_in_f32(build) -> None:
    root32, r32 = build()
    root16, r16 = build('[targets.cpu-openvino]\nprecision = "fp16"\n', "--no-bench")
    assert r16.code == 0, r16.stderr
    report = report_of(root16)
    assert report["status"] == "passed" and report["precision"] == "fp16"
    assert report["validation"]["runtime"]["latency_mode"]["inference_precision"] == "f32"
    assert 'element_type="f16"' in (root16 / BUNDLE / "model.xml").read_text()
    size16 = (root16 / BUNDLE / "model.bin").stat().st_size
    assert size16 < 0.6 * (root32 / BUNDLE / "model.bin").stat().st_size


def test_bf16_runs_where_the_cpu_has_it_else_says_why(build) -> None:
    root, r = build('[targets.cpu-openvino]\nprecision = "bf16"\n', "--no-bench")
    if "BF16" in cpu_facts()["capabilities"]:
        assert r.code == 0, r.stderr
        compiled = report_of(root)["validation"]["runtime"]["latency_mode"]
        assert compiled["inference_precision"] == "bf16"
        assert any(k.endswith(":bf16") for k in compiled["layer_precisions"])
        cfg = (root / BUNDLE / "triton/tiny/config.pbtxt").read_text()
        assert 'key: "HINT_BF16"' in cfg
    else:
        assert r.code == 3 and "bfloat16" in r.stderr and "Traceback" not in r.stderr


def test_int8_ptq_calibrates_on_train_and_passes(build, test_labels) -> None:
    root, r = build("", "--int8", "--no-bench")
    assert r.code == 0, r.stderr
    report = report_of(root)
    assert report["status"] == "passed" and report["precision"] == "int8"
    q = report["details"]["int8"]
    assert q["mode"] == "ptq" and q["calibration"] == {"split": "train", "images": 300}
    assert q["layers"]["int8"] and not q["layers"]["float"]
    assert_layers_as_reported(root / BUNDLE, q["layers"])
    # The gates pass on an independent recount of the shipped predictions.
    want = recount(root / BUNDLE, test_labels)
    assert want["sensitivity"] >= 0.98 and want["sensitivity_drop"] <= 0.005, want
    compiled = report["validation"]["runtime"]["latency_mode"]
    assert compiled["inference_precision"] == "f32"
    assert all(k.split(":")[1] in ("u8", "i8") for k in compiled["layer_precisions"])


def test_int8_that_loses_sensitivity_is_not_published(build, test_labels) -> None:
    root, r = build(NORMAL_IS_POSITIVE, "--int8", "--no-bench")
    assert r.code == 1, r.stderr
    assert "gate failed" in r.stderr and "max_sensitivity_drop" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (root / BUNDLE).exists()
    report = report_of(root, failed=True)
    assert report["status"] == "failed"
    assert report["reason"].startswith("gate failed") and "max_sensitivity_drop" in report["reason"]
    # The drop, recounted from the kept predictions with "normal" as the positive class.
    failed = root / "dist/.failed/tiny-1.0.0/cpu-openvino"
    want = recount(failed, test_labels)
    assert want["sensitivity_drop"] > 0.005, want
    assert report["clinical"]["sensitivity_drop"] == pytest.approx(want["sensitivity_drop"])


def test_accuracy_control_keeps_layers_in_float_to_hold_sensitivity(build, test_labels) -> None:
    extra = NORMAL_IS_POSITIVE + (
        '[targets.cpu-openvino]\nint8_mode = "accuracy-control"\ncontrol_size = 200\n'
    )
    root, r = build(extra, "--int8", "--no-bench")
    assert r.code == 0, r.stderr
    report = report_of(root)
    assert report["status"] == "passed"
    q = report["details"]["int8"]
    assert q["control"]["split"] == "val" and q["control"]["images"] == 200
    assert q["control"]["drop"] <= q["control"]["max_drop"] == 0.005
    # Plain PTQ loses ~0.5 sensitivity here (test above): layers had to go back to float, and
    # the shipped IR, read and compiled by OpenVINO, computes them in float.
    assert q["reverted_to_float"]
    assert_layers_as_reported(root / BUNDLE, q["layers"])
    assert not any(ir_int8_layers(root / BUNDLE / "model.xml")[n] for n in q["reverted_to_float"])
    want = recount(root / BUNDLE, test_labels)
    assert want["sensitivity_drop"] <= 0.005, want
    check = next(
        c for c in report["gates"]["checks"] if c["name"] == "int8_control_sensitivity_drop"
    )
    assert check["passed"]
    assert any("kept in float" in n for n in report["notes"])


def test_accuracy_control_refuses_the_validation_split(build) -> None:
    extra = '[targets.cpu-openvino]\nint8_mode = "accuracy-control"\ncontrol_split = "test"\n'
    _, r = build(extra, "--int8", "--no-bench")
    assert_user_error(r, "control_split", "validation split")


def test_unknown_precision_is_a_user_error(build) -> None:
    _, r = build('[targets.cpu-openvino]\nprecision = "int4"\n', "--no-bench")
    assert_user_error(r, "precision", "int8")


@pytest.mark.parametrize(
    ("name", "variant"),
    [
        ("ov_nhwc_softmax", {"layout": "NHWC", "softmax": True}),
        ("ov_fixed4", {"batch": 4}),
        ("ov_fp16_io", {"dtype": "float16"}),
    ],
)
def test_model_variants_build(build, make_model, name, variant) -> None:
    # INT8 where calibration batching or layout matters; the fp16-input model in fp32.
    int8 = variant.get("dtype") != "float16"
    flags = ("--int8", "--no-bench") if int8 else ("--no-bench",)
    root, r = build("", *flags, model=make_model(name, **variant))
    assert r.code == 0, r.stderr
    report = report_of(root)
    assert report["status"] == "passed"
    if int8:
        assert report["details"]["int8"]["layers"]["int8"]
    else:
        assert report["clinical"]["flipped"] == []
    expected = "probabilities" if variant.get("softmax") else "logits"
    assert report["clinical"]["output"] == expected
    cfg = parse_config(root / BUNDLE / "triton/tiny/config.pbtxt")
    assert cfg.input[0].dims[0] == variant.get("batch", -1)  # a fixed batch, else variable
