from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from packager.core.errors import UserError
from packager.core.model import inspect_model, load_model, opset_of, upgrade_opset


def test_inspect_reports_signature_and_flops(tiny_model: Path) -> None:
    info = inspect_model(tiny_model)
    assert info.input.name == "input" and info.input.dtype == "float32"
    assert info.input.shape == ["N", 3, 32, 32] and info.batch == "dynamic"
    assert info.layout == "NCHW" and info.channels == 3 and info.spatial == [32, 32]
    assert info.num_classes == 2 and not info.ends_with_softmax
    # conv1: 8x16x16 outputs x 3x3x3; conv2: 16x8x8 x 8x3x3; gemm: 2 x 256
    assert info.macs_per_sample == 8 * 16 * 16 * 27 + 16 * 8 * 8 * 72 + 2 * 256
    assert info.params == 8 * 27 + 16 * 72 + 256 * 2 + 2
    assert info.ops["Conv"] == 2 and info.opset == 17


def test_variants_from_other_sources(make_model) -> None:
    nhwc = inspect_model(make_model("nhwc", layout="NHWC", batch=4, softmax=True, opset=11))
    assert nhwc.layout == "NHWC" and nhwc.batch == 4 and nhwc.fixed_batch == 4
    assert nhwc.ends_with_softmax and nhwc.opset == 11
    half = inspect_model(make_model("half", dtype="float16"))
    assert half.input.dtype == "float16"


def test_upgrade_old_opset(make_model) -> None:
    model = load_model(make_model("old", opset=11))
    assert opset_of(upgrade_opset(model, 13)) == 13


def _save(tmp_path: Path, graph: onnx.GraphProto) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_two_inputs_are_refused(tmp_path: Path) -> None:
    g = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 8]) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    with pytest.raises(UserError, match="2 inputs"):
        inspect_model(_save(tmp_path, g))


def test_integer_input_is_refused(tmp_path: Path) -> None:
    g = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    with pytest.raises(UserError, match="int64"):
        inspect_model(_save(tmp_path, g))


def test_not_onnx_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_text("definitely not a protobuf\n" * 10)
    with pytest.raises(UserError, match="ONNX"):
        inspect_model(bad)
