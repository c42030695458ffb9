"""gpu-tensorrt on real data. Without CUDA (this CI): the portable Triton repository, accepted by
Triton's ModelConfig schema, its exact ONNX graph checked on ONNX Runtime CPU as a labelled proxy,
`not-validated` in the report, `engine = "require"` refused with exit 3. With CUDA and TensorRT:
a real engine, validated on TensorRT, refused on a mismatching GPU."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb
from tritonclient.utils import np_to_triton_dtype

from packager.convert.triton import check_repository, parse_config
from packager.core.config import load_config
from packager.core.errors import Unavailable
from packager.core.templating import render
from packager.runtime.runner import ModuleRunner
from packager.shipped.preprocess import Preprocess
from packager.targets.gpu_tensorrt import GpuTensorRT, cuda_host
from tests.conftest import DEFAULT_TOML, Result, _run, assert_user_error, run_predict
from tests.test_recount import recount

GPU, NO_GPU_REASON = cuda_host()
needs_cuda = pytest.mark.skipif(GPU is None, reason=f"needs CUDA + TensorRT: {NO_GPU_REASON}")
without_cuda = pytest.mark.skipif(GPU is not None, reason="this host has CUDA + TensorRT")


def build(folder: Path, model: Path, data: Path, options: str = "", *flags: str) -> Result:
    folder.mkdir(parents=True, exist_ok=True)
    toml = DEFAULT_TOML.format(model=model, data=data) + "[targets.gpu-tensorrt]\n" + options
    (folder / "packager.toml").write_text(toml)
    return _run(["build", "--target", "gpu-tensorrt", *flags], folder)


class Bundle:
    def __init__(self, result: Result, root: Path) -> None:
        assert result.code in (0, 1), result.stderr
        self.result = result
        self.dir = root / "dist" / "tiny-1.0.0" / "gpu-tensorrt"
        if not self.dir.exists():
            self.dir = root / "dist" / ".failed" / "tiny-1.0.0" / "gpu-tensorrt"
        self.report = json.loads((self.dir / "report.json").read_text())
        self.runtime = json.loads((self.dir / "runtime.json").read_text())
        self.config = parse_config(self.dir / "triton" / "tiny" / "config.pbtxt")

    @property
    def onnx(self) -> onnx.ModelProto:
        return onnx.load(str(self.dir / self.runtime["runner_options"]["model"]))


@pytest.fixture(scope="module")
def bundle(
    tmp_path_factory: pytest.TempPathFactory,
    make_model: Callable[..., Path],
    data_path: Path,
) -> Callable[..., Bundle]:
    """bundle(key, model_variant, options) -> the built bundle, built once per key."""
    built: dict[str, Bundle] = {}

    def get(key: str, variant: dict | None = None, options: str = "") -> Bundle:
        if key not in built:
            model = make_model(f"trt-{key}", **(variant or {}))
            root = tmp_path_factory.mktemp(key)
            built[key] = Bundle(build(root, model, data_path, options), root)
        return built[key]

    return get


def accelerator(b: Bundle) -> dict[str, str]:
    accs = b.config.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accs] == ["tensorrt"]
    return dict(accs[0].parameters)


@without_cuda
def test_availability_says_why_validation_and_benchmark_cannot_run() -> None:
    avail = GpuTensorRT().availability()
    assert avail.build.ok
    for status in (avail.validate, avail.bench):
        assert not status.ok and "packager[gpu]" in status.reason and "CUDA" in status.reason


@without_cuda
def test_portable_fp16_repository_passes_the_proxy_and_says_not_validated(
    bundle: Callable[..., Bundle],
) -> None:
    b = bundle("fp16")
    r = b.report
    assert b.result.code == 0
    assert r["status"] == "not-validated"
    assert r["reason"].startswith("not validated: no CUDA")
    assert "ONNX Runtime CPU" in r["validation"]["proxy"] and "FP16" in r["validation"]["proxy"]
    assert r["gates"]["passed"] and {c["name"] for c in r["gates"]["checks"]} >= {
        "min_sensitivity",
        "max_sensitivity_drop",
    }
    assert r["clinical"]["sensitivity"] >= 0.98 and r["clinical"]["sensitivity_drop"] <= 0.005
    assert r["benchmark"]["status"] == "skipped" and "CUDA" in r["benchmark"]["reason"]
    assert r["details"]["form"] == "portable" and r["details"]["engine"] is None
    manifest = json.loads((b.dir / "manifest.json").read_text())
    assert manifest["details"]["form"] == "portable"

    cfg = b.config
    assert cfg.name == "tiny" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 64
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [
        ("input", pb.TYPE_FP32, [3, 32, 32])
    ]
    assert [(o.data_type, list(o.dims)) for o in cfg.output] == [(pb.TYPE_FP32, [2])]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert [g.kind for g in cfg.instance_group] == [pb.ModelInstanceGroup.KIND_GPU]
    assert [w.batch_size for w in cfg.model_warmup] == [1, 32]
    params = accelerator(b)
    assert params["precision_mode"] == "FP16"
    assert params["trt_profile_min_shapes"] == "input:1x3x32x32"
    assert params["trt_profile_opt_shapes"] == "input:32x3x32x32"
    assert params["trt_profile_max_shapes"] == "input:64x3x32x32"
    assert check_repository(b.dir / "triton") == []

    # The repository serves a real FP16 graph, and the proxy ran exactly that file.
    assert b.runtime["runner_options"]["model"] == "triton/tiny/1/model.onnx"
    weights = {init.data_type for init in b.onnx.graph.initializer}
    assert weights == {onnx.TensorProto.FLOAT16}
    onnx.checker.check_model(b.onnx)


@without_cuda
def test_written_config_parses_back_to_what_the_bundle_serves(
    bundle: Callable[..., Bundle],
) -> None:
    """config.pbtxt read with protobuf's own parser into a fresh ModelConfig, each field checked
    against the ONNX graph it serves (read with onnx), runtime.json and the manifest."""
    b = bundle("fp16")
    text = (b.dir / "triton" / "tiny" / "config.pbtxt").read_text(encoding="utf-8")
    cfg = text_format.Parse(text, pb.ModelConfig())
    manifest = json.loads((b.dir / "manifest.json").read_text())
    served = manifest["details"]["triton"]
    graph = b.onnx.graph

    def triton_type(elem_type: int) -> int:  # onnx -> numpy -> Triton, by the two libraries
        np_type = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
        return pb.DataType.Value("TYPE_" + np_to_triton_dtype(np_type))

    def dims(value: onnx.ValueInfoProto) -> list[int]:
        shape = value.type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else -1 for d in shape]

    assert cfg.name == manifest["name"] == "tiny"
    assert cfg.platform == served["platform"] == "onnxruntime_onnx" and not cfg.backend
    assert b.runtime["runner_options"]["model"] == f"triton/{cfg.name}/1/model.onnx"
    assert b.runtime["fixed_batch"] is None and cfg.max_batch_size == served["max_batch_size"]
    [inp], [out] = graph.input, graph.output
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [
        (inp.name, triton_type(inp.type.tensor_type.elem_type), dims(inp)[1:])
    ]
    assert b.runtime["input"]["name"] == inp.name
    assert b.runtime["input"]["shape"][1:] == list(cfg.input[0].dims)
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [
        (out.name, triton_type(out.type.tensor_type.elem_type), [len(b.runtime["labels"])])
    ]
    batcher = cfg.dynamic_batching
    assert list(batcher.preferred_batch_size) == served["preferred_batch_sizes"]
    assert batcher.max_queue_delay_microseconds == served["max_queue_delay_us"]
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(pb.ModelInstanceGroup.KIND_GPU, 1)]
    for warm in cfg.model_warmup:
        assert 1 <= warm.batch_size <= cfg.max_batch_size
        assert list(warm.inputs) == [inp.name]
        w = warm.inputs[inp.name]
        assert (w.data_type, list(w.dims), w.zero_data) == (
            cfg.input[0].data_type,
            cfg.input[0].dims,
            True,
        )
    # Written by the library's printer: printing the parsed message gives the file back.
    assert text_format.MessageToString(cfg, use_short_repeated_primitives=True) == text


@without_cuda
def test_proxy_scores_are_those_of_the_shipped_graph(
    bundle: Callable[..., Bundle], data_path: Path
) -> None:
    b = bundle("fp16")
    pre = Preprocess.from_json(b.dir / "preprocess.json")
    with np.load(data_path) as npz:
        x = pre(npz["test_images"][:64])
    sess = ort.InferenceSession(str(b.dir / "triton/tiny/1/model.onnx"))
    logits = sess.run(None, {"input": x})[0].astype(np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    with np.load(b.dir / "validation.npz") as v:
        np.testing.assert_allclose(v["probs"][:64], e / e.sum(1, keepdims=True), atol=1e-5)
        # FP16 is not the FP32 reference bit for bit: the proxy really ran the converted graph.
        assert np.abs(v["probs"] - v["reference"]).max() > 0


@without_cuda
def test_bundle_readme_verify_and_predict_script(
    bundle: Callable[..., Bundle], data_path: Path, tmp_path: Path
) -> None:
    b = bundle("fp16")
    readme = (b.dir / "README.md").read_text()
    assert "portable form" in readme and "perf_analyzer -m tiny -i grpc" in readme
    assert "tritonserver --model-repository=/models" in readme
    assert _run(["verify", str(b.dir)], tmp_path).code == 0
    with np.load(data_path) as npz:
        # Without a GPU the bundle's own runtime refuses (exit 3); its labelled proxy runs.
        p = run_predict(b.dir, npz["test_images"][3], tmp_path, kind="proxy")
        p = p["probabilities"]["pneumonia"]
    with np.load(b.dir / "validation.npz") as v:
        assert p == pytest.approx(float(v["probs"][3, 1]), abs=1e-4)


def test_engine_form_docs_render_and_name_the_gpu(
    bundle: Callable[..., Bundle], tmp_path: Path
) -> None:
    """The engine-form README (rendered here from a report as a GPU host writes it) ties the
    engine to its GPU and TensorRT version, and the shipped runtime.py holds the engine code."""
    b = bundle("fp16")
    engine = {"gpu": "NVIDIA H100", "compute_capability": "9.0", "memory_mb": 1, "tensorrt": "10.9"}
    report = b.report | {"details": b.report["details"] | {"form": "engine", "engine": engine}}
    cfg = load_config(b.dir.parents[2] / "packager.toml")
    # The engine form runs the same shipped runtime.py (TensorRTEngine) as every other form.
    assert "class TensorRTEngine" in (b.dir / "runtime.py").read_text()
    readme = render("targets/gpu-tensorrt/README.md.j2", r=report, cfg=cfg)
    assert "built on **NVIDIA H100**" in readme and "compute capability 9.0" in readme
    assert "ships TensorRT 10.9" in readme and "model.plan" in readme


@without_cuda
def test_fp16_io_model_gets_fp16_tensors(bundle: Callable[..., Bundle]) -> None:
    b = bundle("f16io", {"dtype": "float16"})
    assert b.report["status"] == "not-validated" and b.report["gates"]["passed"]
    cfg = b.config
    assert cfg.input[0].data_type == pb.TYPE_FP16 and cfg.output[0].data_type == pb.TYPE_FP16
    assert cfg.model_warmup[0].inputs["input"].data_type == pb.TYPE_FP16


@without_cuda
def test_fixed_batch_fp32_model_has_no_batcher(bundle: Callable[..., Bundle]) -> None:
    b = bundle("fixed", {"batch": 4}, 'precision = "fp32"\nengine = "skip"\n')
    r = b.report
    assert r["status"] == "not-validated" and r["gates"]["passed"]
    assert r["details"]["engine_reason"] == 'engine = "skip"'
    assert any("fixed batch of 4" in n for n in r["notes"])
    cfg = b.config
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [4, 3, 32, 32] and list(cfg.output[0].dims) == [4, 2]
    assert [w.batch_size for w in cfg.model_warmup] == [1]
    params = accelerator(b)
    assert params["precision_mode"] == "FP32" and "trt_profile_min_shapes" not in params
    assert {i.data_type for i in b.onnx.graph.initializer} == {onnx.TensorProto.FLOAT}


@without_cuda
def test_int8_ships_qdq_calibrated_off_the_validation_split(
    bundle: Callable[..., Bundle], data_path: Path
) -> None:
    b = bundle("int8", None, 'precision = "int8"\n')
    r = b.report
    assert r["precision"] == "int8" and accelerator(b)["precision_mode"] == "INT8"
    assert r["details"]["calibration"] == {"split": "train", "cache": "calibration.json"}
    cache = json.loads((b.dir / "calibration.json").read_text())
    assert "output" in cache["data"]  # ranges of real activations
    ops = [n.op_type for n in b.onnx.graph.node]
    assert ops.count("QuantizeLinear") >= 2 and "Gemm" in ops
    dq_outputs = {o for n in b.onnx.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    conv = next(n for n in b.onnx.graph.node if n.op_type == "Conv")
    gemm = next(n for n in b.onnx.graph.node if n.op_type == "Gemm")
    assert set(conv.input[:2]) <= dq_outputs  # INT8 convolutions
    assert not set(gemm.input[1:]) & dq_outputs  # the classifier head stays floating point
    # The QDQ graph keeps sensitivity on an independent recount of its (proxy) predictions,
    # so the gates pass and the bundle is published, labelled not validated.
    with np.load(data_path) as d:
        want = recount(b.dir, d["test_labels"].reshape(-1).astype(np.int64))
    assert want["sensitivity"] >= 0.98 and want["sensitivity_drop"] <= 0.005, want
    assert r["gates"]["passed"] and r["status"] == "not-validated" and b.result.code == 0


@without_cuda
def test_engine_require_without_cuda_exits_3_in_one_line(
    project: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    root = project('[targets.gpu-tensorrt]\nengine = "require"\n')
    r = cli("build", "--target", "gpu-tensorrt", cwd=root)
    assert r.code == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert 'engine = "require"' in lines[0] and "CUDA" in lines[0]
    assert not (root / "dist" / "tiny-1.0.0" / "gpu-tensorrt").exists()


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ("preferred_batch_sizes = [128]", "preferred_batch_sizes"),
        ('precision = "bf16"', "precision"),
        ('engine = "always"', "engine"),
        ("max_batch_size = 0", "max_batch_size"),
        ("max_batch = 8", "max_batch_size"),  # the hint names the real key
    ],
)
def test_bad_options_are_one_line_errors(
    project: Callable[..., Path], cli: Callable[..., Result], options: str, words: str
) -> None:
    root = project(f"[targets.gpu-tensorrt]\n{options}\n")
    assert_user_error(cli("build", "--target", "gpu-tensorrt", cwd=root), words)


# --- hosts with CUDA and TensorRT -----------------------------------------------------------


@needs_cuda
def test_engine_is_built_validated_on_tensorrt_and_benchmarked(
    bundle: Callable[..., Bundle],
) -> None:
    b = bundle("engine", None, 'engine = "require"\n')
    r = b.report
    assert r["details"]["form"] == "engine" and r["status"] == "passed", r["reason"]
    eng = r["details"]["engine"]
    assert eng["gpu"] == GPU.name and eng["compute_capability"] == GPU.compute_capability
    assert eng["tensorrt"] and r["validation"]["runtime"]["runtime"] == "tensorrt"
    manifest = json.loads((b.dir / "manifest.json").read_text())
    assert manifest["details"]["engine"] == eng  # GPU, compute capability, TensorRT version
    assert b.config.platform == "tensorrt_plan"
    assert (b.dir / "triton/tiny/1/model.plan").stat().st_size > 0
    assert check_repository(b.dir / "triton") == []
    cross = [c for c in r["gates"]["checks"] if "ONNX Runtime CUDA" in c["name"]]
    assert cross and cross[0]["passed"]
    assert r["benchmark"]["status"] == "ok"
    assert r["benchmark"]["runtime"]["gpu_memory_mb"] >= 0


@needs_cuda
def test_engine_runner_refuses_a_mismatching_gpu(bundle: Callable[..., Bundle]) -> None:
    b = bundle("engine", None, 'engine = "require"\n')
    built_for = {**b.runtime["runner_options"]["built_for"], "compute_capability": "0.0"}
    options = {**b.runtime["runner_options"], "built_for": built_for}
    runner = ModuleRunner(b.dir, b.dir, options)  # the bundle's own runtime.py
    with pytest.raises(Unavailable, match="compute capability 0.0"):
        runner.load()
