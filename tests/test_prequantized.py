"""Models a target cannot take are results, not crashes: pre-quantized classifiers (QOperator and
QDQ formats, made here with onnxruntime.quantization from the tiny CNN) and a custom-domain
operator, through the real CLI and real runtimes. What each target refuses is checked against
the operators read from the ONNX file with onnx itself."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from packager.builder.stages import converter_errors as _converter_errors
from packager.core.errors import ConversionFailed
from packager.core.registry import names
from tests.conftest import Result
from tests.models import make_custom_op, make_quantized

ROOT = "dist/tiny-1.0.0"
FAILED = "dist/.failed/tiny-1.0.0"
CUSTOM = ("com.example.vision", "FancyRelu")
QOPERATOR_RUNNERS = {"cpu-onnxruntime", "edge-ort"}  # ONNX Runtime has the QLinear* kernels
# INT8 shifts the tiny model's scores: at 0.05 the quantized fixture has sensitivity ~0.99 and
# specificity ~0.43, about what the float model has at conftest's 0.2.
THRESHOLD = 0.05


def quantized_project(project: Callable[..., Path], model: Path) -> Path:
    toml = project(model=model) / "packager.toml"
    toml.write_text(toml.read_text().replace("threshold = 0.2", f"threshold = {THRESHOLD}"))
    return toml.parent


@pytest.fixture(scope="session")
def qoperator(models_dir: Path, tiny_model: Path, data_path: Path) -> Path:
    return make_quantized(tiny_model, models_dir / "qoperator.onnx", str(data_path), "QOperator")


@pytest.fixture(scope="session")
def qdq(models_dir: Path, tiny_model: Path, data_path: Path) -> Path:
    return make_quantized(tiny_model, models_dir / "qdq.onnx", str(data_path), "QDQ")


@pytest.fixture(scope="session")
def custom_op(models_dir: Path, tiny_model: Path) -> Path:
    return make_custom_op(tiny_model, models_dir / "custom.onnx", *CUSTOM)


def ops_of(model: Path) -> set[str]:
    """The model's operators as runtimes name them (domain.op outside the default domain)."""
    m = onnx.load(str(model))
    return {
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        for n in m.graph.node
    }


def results(r: Result) -> dict[str, dict]:
    return {x["target"]: x for x in r.json["results"]}


def assert_one_line_no_traceback(r: Result) -> None:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    assert len(r.stderr.strip().splitlines()) <= 1, r.stderr


def assert_refused(root: Path, res: dict, target: str) -> None:
    """Refused: one-line reason, nothing published, the full log kept under .failed/."""
    assert res["status"] in ("unsupported-model", "conversion-failed"), res
    assert res["bundle"] is None and "\n" not in res["reason"] and res["reason"]
    assert not (root / ROOT / target).exists() and not (root / ROOT / f"{target}.tar.gz").exists()
    log = root / FAILED / target / "conversion.log"
    assert Path(res["log"]) == log and res["reason"] in log.read_text()


def assert_published(root: Path, res: dict, target: str) -> dict:
    assert res["status"] == "passed", res
    bundle = root / ROOT / target
    assert Path(res["bundle"]) == bundle and (bundle / "manifest.json").is_file()
    return json.loads((bundle / "report.json").read_text())


def test_qoperator_all_targets_complete_with_exit_4(
    qoperator: Path, project: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    root = quantized_project(project, qoperator)
    r = cli("build", "--all", "--no-bench", "--json", cwd=root)
    assert r.code == 4, r.stderr
    assert_one_line_no_traceback(r)
    res = results(r)
    assert set(res) == set(names())  # every target has a result: the build went on
    ops = ops_of(qoperator)
    quantized = {o for o in ops if re.search(r"(^|\.)(QLinear\w+|QGemm)$", o)}
    assert {"QLinearConv", "com.microsoft.QGemm"} <= quantized  # what the fixture is made of
    for target, x in res.items():
        if target in QOPERATOR_RUNNERS:
            report = assert_published(root, x, target)
            assert report["precision"] == "int8 (pre-quantized)"
        elif x["status"] != "unavailable":
            assert_refused(root, x, target)
            named = {o for o in quantized if o in x["reason"]}
            assert named, (target, x["reason"])  # the refused operators, by name
    assert "could not" in r.stderr or "cannot take this model" in r.stderr


def test_qoperator_named_targets_go_on_after_a_refusal(
    qoperator: Path, project: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    root = quantized_project(project, qoperator)
    r = cli("build", "-t", "cpu-openvino", "-t", "edge-ort", "--no-bench", "--json", cwd=root)
    assert r.code == 4, r.stderr
    assert_one_line_no_traceback(r)
    res = results(r)
    assert_refused(root, res["cpu-openvino"], "cpu-openvino")
    assert "com.microsoft.QGemm" in res["cpu-openvino"]["reason"]
    assert "QDQ" in res["cpu-openvino"]["reason"]  # what the model needs, in the refusal
    assert_published(root, res["edge-ort"], "edge-ort")


def test_qdq_builds_on_openvino_and_edge_ort_with_the_gate_measured(
    qdq: Path, project: Callable[..., Path], cli: Callable[..., Result], data_path: Path
) -> None:
    root = quantized_project(project, qdq)
    r = cli("build", "-t", "cpu-openvino", "-t", "edge-ort", "--no-bench", "--json", cwd=root)
    assert r.code == 0, r.stderr
    assert "Traceback" not in r.stderr
    with np.load(data_path) as npz:
        labels = npz["test_images"].shape[0], npz["test_labels"].reshape(-1)
    for target, x in results(r).items():
        report = assert_published(root, x, target)
        assert report["precision"] == "int8 (pre-quantized)"
        with np.load(root / ROOT / target / "validation.npz") as v:
            assert np.array_equal(v["labels"], labels[1])
            sens = float(np.mean(v["probs"][v["labels"] == 1, 1] >= THRESHOLD))  # recount
            spec = float(np.mean(v["probs"][v["labels"] == 0, 1] < THRESHOLD))
        assert spec > 0.3  # a classifier, not "everything positive": the gate means something
        gate = next(c for c in report["gates"]["checks"] if c["name"] == "min_sensitivity")
        assert gate["status"] == "passed" and gate["value"] == pytest.approx(sens)
        assert report["clinical"]["sensitivity"] == pytest.approx(sens)
    # OpenVINO read the Q/DQ pairs natively: the IR computes them as FakeQuantize (INT8).
    xml = (root / ROOT / "cpu-openvino" / "model.xml").read_text()
    assert xml.count('type="FakeQuantize"') >= 2


def test_int8_on_a_quantized_model_is_refused_per_target(
    qdq: Path, project: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    root = project(model=qdq)
    r = cli(
        "build", "-t", "cpu-openvino", "-t", "edge-ort", "--int8", "--no-bench", "--json", cwd=root
    )
    assert r.code == 4, r.stderr
    assert_one_line_no_traceback(r)
    for target, x in results(r).items():
        assert_refused(root, x, target)
        assert "already quantized (QDQ format)" in x["reason"], x["reason"]


def test_custom_domain_operator_is_refused_by_every_target_by_name(
    custom_op: Path, project: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    root = project(model=custom_op)
    r = cli("build", "--all", "--no-bench", "--json", cwd=root)
    assert r.code == 4, r.stderr
    assert_one_line_no_traceback(r)
    name = ".".join(CUSTOM)
    assert name in ops_of(custom_op)
    res = results(r)
    assert set(res) == set(names())
    for target, x in res.items():
        if x["status"] == "unavailable":
            continue
        assert_refused(root, x, target)
        assert name in x["reason"], (target, x["reason"])
    assert not (root / ROOT).exists()  # nothing published


def test_inspect_reports_the_quantization_format_and_domains(
    qoperator: Path, qdq: Path, tiny_model: Path, cli: Callable[..., Result], tmp_path: Path
) -> None:
    for model, fmt in ((qoperator, "QOperator"), (qdq, "QDQ"), (tiny_model, None)):
        r = cli("inspect", model, "--json", cwd=tmp_path)
        assert r.code == 0, r.stderr
        q = r.json["quantization"]
        domains = {n.domain or "ai.onnx" for n in onnx.load(str(model)).graph.node}
        if fmt is None:
            assert q is None
        else:
            assert q["format"] == fmt and set(q["domains"]) == domains
        verdicts = {t["name"]: t["accepts"]["ok"] for t in r.json["targets"]}
        assert verdicts.get("cpu-onnxruntime") is True
    text = cli("inspect", qoperator, cwd=tmp_path).stdout
    assert "QOperator format" in text and "com.microsoft" in text


def test_targets_model_says_why_not_before_any_conversion(
    custom_op: Path, cli: Callable[..., Result], tmp_path: Path
) -> None:
    r = cli("targets", "--model", custom_op, "--json", cwd=tmp_path)
    assert r.code == 0, r.stderr
    for row in r.json["targets"]:
        if "model" in row:
            assert row["model"]["ok"] is False and ".".join(CUSTOM) in row["model"]["reason"]
    assert not (tmp_path / "dist").exists()


def test_an_error_raised_inside_a_converter_library_is_a_conversion_failure(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConversionFailed) as caught, _converter_errors():
        onnx.load(str(tmp_path / "missing.onnx"))  # raised inside onnx, not packager
    assert "Traceback" in caught.value.log and "\n" not in str(caught.value)
    # Raised in our own code, not in a library: a bug, which keeps its traceback.
    with pytest.raises(KeyError), _converter_errors():
        {}["bug"]


def test_symmetric_qdq_ships_as_it_is_for_tensorrt_int8(
    models_dir: Path,
    tiny_model: Path,
    data_path: Path,
    project: Callable[..., Path],
    cli: Callable[..., Result],
) -> None:
    model = make_quantized(
        tiny_model, models_dir / "qdq-sym.onnx", str(data_path), "QDQ", symmetric=True
    )
    root = project(model=model)
    r = cli("build", "-t", "gpu-tensorrt", "--no-bench", "--json", cwd=root)
    assert r.code in (0, 1), r.stderr  # the gate decides; the model is taken either way
    x = results(r)["gpu-tensorrt"]
    assert x["status"] not in ("unsupported-model", "conversion-failed"), x
    bundle = Path(x["bundle"])
    report = json.loads((bundle / "report.json").read_text())
    assert report["precision"] == "int8 (pre-quantized)"
    shipped = next(bundle.rglob("model.onnx"))
    # The model's own Q/DQ graph, not re-converted: same nodes and the same zero points.
    src, out = onnx.load(str(model)), onnx.load(str(shipped))
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in src.graph.node]
    pbtxt = next(bundle.rglob("config.pbtxt")).read_text()
    assert '"INT8"' in pbtxt


def test_a_failed_gate_outranks_a_refusal_and_the_json_is_printed(
    qoperator: Path, project: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    toml = project(model=qoperator) / "packager.toml"
    toml.write_text(toml.read_text().replace("threshold = 0.2", "threshold = 0.95"))
    r = cli(
        "build",
        "-t",
        "cpu-onnxruntime",
        "-t",
        "cpu-openvino",
        "--no-bench",
        "--json",
        cwd=toml.parent,
    )
    assert r.code == 1, r.stderr
    assert_one_line_no_traceback(r)
    res = results(r)
    assert res["cpu-onnxruntime"]["status"] == "failed"
    assert res["cpu-openvino"]["status"] == "unsupported-model"


def test_exit_code_precedence_is_the_documented_one() -> None:
    from packager.api import BuildResults
    from packager.builder.state import TargetResult
    from packager.core.errors import GateFailed, ModelRefused, Unavailable

    ok = TargetResult("a", "passed")
    refused = TargetResult("b", "unsupported-model", "no kernel for X")
    missing = TargetResult("c", "unavailable", "no CUDA here")
    failed = TargetResult("d", "failed", "gate failed")
    cases = [
        ([ok], None, True),
        ([ok, missing], Unavailable, True),
        ([ok, missing], None, False),  # --all skips what this host cannot build
        ([ok, missing, refused], ModelRefused, True),
        ([missing, refused, failed], GateFailed, True),
    ]
    for results_, expected, explicit in cases:
        if expected is None:
            BuildResults(results_, explicit).raise_for_status()
            continue
        with pytest.raises(expected) as caught:
            BuildResults(results_, explicit).raise_for_status()
        assert type(caught.value) is expected
    assert (GateFailed.exit_code, ModelRefused.exit_code, Unavailable.exit_code) == (1, 4, 3)


def with_constant_node(tiny: Path, dest: Path) -> Path:
    """The tiny classifier with its Gemm bias given by a Constant node (as torch exports do)."""
    m = onnx.load(str(tiny))
    bias = next(i for i in m.graph.initializer if i.name == "B")
    m.graph.initializer.remove(bias)
    m.graph.node.insert(0, onnx.helper.make_node("Constant", [], ["B"], value=bias))
    onnx.checker.check_model(m)
    onnx.save(m, str(dest))
    return dest


def test_the_cheap_check_agrees_with_onnx_runtime_itself(
    tiny_model: Path, qoperator: Path, qdq: Path, custom_op: Path, tmp_path: Path
) -> None:
    """ONNX Runtime's kernel registry says yes exactly where an InferenceSession loads."""
    import onnxruntime as ort

    from packager.core.model import inspect_model
    from packager.core.registry import get

    constant = with_constant_node(tiny_model, tmp_path / "constant.onnx")
    for model in (tiny_model, constant, qoperator, qdq, custom_op):
        try:
            ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
            loads = True
        except Exception:  # ORT's own refusal (NOT_IMPLEMENTED / INVALID_GRAPH)
            loads = False
        info = inspect_model(model)
        for target in ("cpu-onnxruntime", "edge-ort"):
            assert get(target).accepts(info, get(target).Options()).ok is loads, (model, target)
