"""The Triton repository writer: every config it writes is read back with Triton's own
ModelConfig protobuf, field by field; user strings survive any characters (the escaping is
protobuf's text_format)."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import model_config_pb2 as pb

from packager.convert.triton import (
    Accelerator,
    Tensor,
    TritonModel,
    check_repository,
    parse_config,
    render_config,
    serve_commands,
    write_repository,
)
from packager.core.errors import UserError


def model(dtype: str = "float32", max_batch: int = 64, **kw: object) -> TritonModel:
    batched = max_batch > 0
    in_shape: list[int | str] = ["N", 3, 64, 64] if batched else [4, 3, 64, 64]
    out_shape: list[int | str] = ["N", 2] if batched else [4, 2]
    args: dict = {
        "name": "pneumonia",
        "inputs": [Tensor.from_shape("input", dtype, in_shape, batched)],
        "outputs": [Tensor.from_shape("output", dtype, out_shape, batched)],
        "platform": "onnxruntime_onnx",
        "max_batch_size": max_batch,
        "preferred_batch_sizes": [8, 32] if batched else [],
        "max_queue_delay_us": 250,
        "warmup_batch_sizes": [1, 8] if batched else [1],
    }
    return TritonModel(**(args | kw))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dynamic_batch_config_parses_with_every_field(dtype: str) -> None:
    m = model(
        dtype,
        gpu_accelerators=[Accelerator("tensorrt", {"precision_mode": "FP16"})],
        parameters={"intra_op_thread_count": "2"},
    )
    cfg = parse_config(render_config(m))
    want = pb.TYPE_FP16 if dtype == "float16" else pb.TYPE_FP32
    assert cfg.name == "pneumonia" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 64
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [
        ("input", want, [3, 64, 64])
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [("output", want, [2])]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 32]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 250
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(pb.ModelInstanceGroup.KIND_GPU, 1)]
    acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert [(a.name, dict(a.parameters)) for a in acc] == [("tensorrt", {"precision_mode": "FP16"})]
    assert cfg.parameters["intra_op_thread_count"].string_value == "2"
    assert [w.batch_size for w in cfg.model_warmup] == [1, 8]
    warm = cfg.model_warmup[1].inputs["input"]
    assert warm.data_type == want and list(warm.dims) == [3, 64, 64] and warm.zero_data


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_fixed_batch_config_keeps_the_batch_axis_and_has_no_batcher(dtype: str) -> None:
    cfg = parse_config(render_config(model(dtype, max_batch=0)))
    assert cfg.max_batch_size == 0
    assert list(cfg.input[0].dims) == [4, 3, 64, 64]
    assert list(cfg.output[0].dims) == [4, 2]
    assert not cfg.HasField("dynamic_batching")
    assert [w.batch_size for w in cfg.model_warmup] == [1]  # Triton's rule without batching
    assert list(cfg.model_warmup[0].inputs["input"].dims) == [4, 3, 64, 64]


def test_cpu_backend_config_for_openvino() -> None:
    m = model(
        platform="",
        backend="openvino",
        instance_kind="KIND_CPU",
        instance_count=2,
        parameters={"NUM_STREAMS": "2", "PERFORMANCE_HINT": "THROUGHPUT"},
        cpu_accelerators=[],
    )
    cfg = parse_config(render_config(m))
    assert cfg.backend == "openvino" and not cfg.platform
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(pb.ModelInstanceGroup.KIND_CPU, 2)]
    assert cfg.parameters["PERFORMANCE_HINT"].string_value == "THROUGHPUT"
    assert not cfg.HasField("optimization")


plain_name = st.text(min_size=1, max_size=30).filter(
    lambda s: s not in (".", "..") and not any(c in s for c in "/\\\0\n")
)


@settings(max_examples=60, deadline=None)
@given(name=plain_name, value=st.text(max_size=30), key=st.text(min_size=1, max_size=10))
def test_user_strings_round_trip_exactly(name: str, value: str, key: str) -> None:
    m = model(
        name=name,
        inputs=[Tensor(name, "float32", [3, 64, 64])],
        parameters={key: value},
        gpu_accelerators=[Accelerator("tensorrt", {key: value})],
        warmup_batch_sizes=[2],
    )
    cfg = parse_config(render_config(m))
    assert cfg.name == name and cfg.input[0].name == name
    assert cfg.parameters[key].string_value == value
    assert dict(
        cfg.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters
    ) == {key: value}
    assert list(cfg.model_warmup[0].inputs) == [name]


def test_quotes_newlines_and_unicode_round_trip_exactly(tmp_path: Path) -> None:
    """The file written, parsed by protobuf into a fresh ModelConfig, equals the message spelled
    out here, every string unchanged. A model name is a folder name, so it has no newline; the
    tensor and parameter strings carry the newlines."""
    name = "pneu\"mo'nia\t\r «肺炎» 🫁 }\u00e9"
    tensor = 'in"put\n}\ninstance_group [{ kind: KIND_CPU }]\n#é'
    value = 'line one\nline "two"\\ \x01 ünïcødé'
    m = model(
        name=name,
        inputs=[Tensor(tensor, "float32", [3, 64, 64])],
        outputs=[Tensor("out\n", "float16", [2])],
        gpu_accelerators=[Accelerator("tensorrt", {tensor: value})],
        parameters={value: tensor},
        warmup_batch_sizes=[],
    )
    (tmp_path / "m.onnx").write_bytes(b"onnx bytes")
    mdir = write_repository(tmp_path, m, {"model.onnx": tmp_path / "m.onnx"})
    assert mdir.name == name
    parsed = text_format.Parse(
        (mdir / "config.pbtxt").read_text(encoding="utf-8"), pb.ModelConfig()
    )
    want = pb.ModelConfig(
        name=name,
        platform="onnxruntime_onnx",
        max_batch_size=64,
        input=[pb.ModelInput(name=tensor, data_type=pb.TYPE_FP32, dims=[3, 64, 64])],
        output=[pb.ModelOutput(name="out\n", data_type=pb.TYPE_FP16, dims=[2])],
        dynamic_batching=pb.ModelDynamicBatching(
            preferred_batch_size=[8, 32], max_queue_delay_microseconds=250
        ),
        instance_group=[pb.ModelInstanceGroup(count=1, kind=pb.ModelInstanceGroup.KIND_GPU)],
        parameters={value: pb.ModelParameter(string_value=tensor)},
    )
    want.optimization.execution_accelerators.gpu_execution_accelerator.add(
        name="tensorrt", parameters={tensor: value}
    )
    assert parsed == want
    assert parsed.name == name and parsed.input[0].name == tensor
    assert parsed.parameters[value].string_value == tensor


def test_injection_attempt_stays_one_string() -> None:
    evil = 'x" max_batch_size: 9999 name: "y'
    cfg = parse_config(render_config(model(name=evil)))
    assert cfg.name == evil and cfg.max_batch_size == 64


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"preferred_batch_sizes": [128]}, "preferred batch size 128"),
        ({"warmup_batch_sizes": [65]}, "warm-up batch size 65"),
        ({"name": "a/b"}, "plain directory name"),
        ({"name": ".."}, "plain directory name"),
        ({"platform": ""}, "platform or a backend"),
        ({"inputs": [Tensor("input", "complex64", [3])]}, "complex64"),
        ({"inputs": [Tensor("input", "float32", [-1, 64, 64])]}, "warm-up needs a concrete"),
        ({"max_batch_size": -1}, "max_batch_size"),
    ],
)
def test_refuses_what_triton_would_refuse(change: dict, words: str) -> None:
    with pytest.raises(UserError, match=words):
        render_config(model(**change))


def test_variable_dims_are_fine_without_warmup() -> None:
    m = model(inputs=[Tensor("input", "float32", [3, -1, -1])], warmup_batch_sizes=[])
    cfg = parse_config(render_config(m))
    assert list(cfg.input[0].dims) == [3, -1, -1] and not cfg.model_warmup


def test_write_repository_lays_out_a_loadable_tree(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(b"onnx bytes")
    mdir = write_repository(tmp_path / "triton", model(), {"model.onnx": src})
    assert mdir == tmp_path / "triton" / "pneumonia"
    assert (mdir / "1" / "model.onnx").read_bytes() == b"onnx bytes"
    assert parse_config(mdir / "config.pbtxt").name == "pneumonia"
    assert check_repository(tmp_path / "triton") == []


def test_write_repository_keeps_a_file_already_in_place(tmp_path: Path) -> None:
    vdir = tmp_path / "triton" / "pneumonia" / "1"
    vdir.mkdir(parents=True)
    (vdir / "model.onnx").write_bytes(b"built in place")
    write_repository(tmp_path / "triton", model(), {"model.onnx": vdir / "model.onnx"})
    assert (vdir / "model.onnx").read_bytes() == b"built in place"
    assert check_repository(tmp_path / "triton") == []


def test_write_repository_refuses_a_missing_model_file_and_escapes(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(b"x")
    with pytest.raises(UserError, match="loads model.onnx"):
        write_repository(tmp_path / "r", model(), {"other.onnx": src})
    with pytest.raises(UserError, match="escapes"):
        write_repository(
            tmp_path / "r",
            model(default_model_filename="../evil"),
            {"../evil": src},
        )


def test_check_repository_names_each_problem(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(b"x")
    root = tmp_path / "triton"
    mdir = write_repository(root, model(), {"model.onnx": src})
    (mdir / "1" / "model.onnx").unlink()
    renamed = mdir.rename(root / "other")
    (root / "broken").mkdir()
    (root / "broken" / "config.pbtxt").write_text("name: 'broken'\nmax_batch_size: lots\n")
    problems = check_repository(root)
    assert any("not a valid Triton model config" in p for p in problems)
    assert any("differs from its folder 'other'" in p for p in problems)
    assert any(p.endswith("missing model.onnx") and str(renamed) in p for p in problems)
    assert check_repository(tmp_path / "empty") == [
        f"{tmp_path / 'empty'}: no <model>/config.pbtxt"
    ]


def test_serve_commands_quote_the_name() -> None:
    cmds = serve_commands(model(name="my model"))
    assert "perf_analyzer -m 'my model' -i grpc" in cmds["perf_analyzer"]
    assert "-b 32" in cmds["perf_analyzer"]
    assert "--gpus all" in cmds["tritonserver"]
    assert "-b 1 " in serve_commands(model(max_batch=0))["perf_analyzer"]
    assert "--gpus" not in serve_commands(model(instance_kind="KIND_CPU"))["tritonserver"]
