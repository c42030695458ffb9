"""The ONNX -> PyTorch translation (apple-coreml's first step) against ONNX Runtime, op by op,
eager and traced, at a batch size other than the one it was traced with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from packager.core.errors import ModelRefused

torch = pytest.importorskip(
    "torch", reason="the Core ML path needs torch (pip install packager[coreml])"
)
from packager.targets.apple_coreml import export  # noqa: E402
from packager.targets.apple_coreml.onnx_to_torch import supported_ops, to_torch  # noqa: E402

RNG = np.random.default_rng(0)


def model_of(
    nodes: list[onnx.NodeProto],
    in_shape: list[int | str],
    out_shape: list[int | str] | None = None,
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def ort_run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def assert_matches(m: onnx.ModelProto, shape: tuple[int, ...], atol: float = 1e-5) -> None:
    """Eager at `shape`, then through torch.export as apple-coreml does it (batch symbolic) and
    run at batch 3 and 1: the dynamic batch must survive."""
    x = RNG.normal(size=shape).astype(np.float32)
    module = to_torch(m)
    with torch.no_grad():
        eager = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(eager, ort_run(m, x), atol=atol, rtol=1e-4)
        program = export(module, torch.from_numpy(x[:1]), 8).module()
        for n in (3, 1):
            xn = RNG.normal(size=(n, *shape[1:])).astype(np.float32)
            np.testing.assert_allclose(
                program(torch.from_numpy(xn)).numpy(), ort_run(m, xn), atol=atol, rtol=1e-4
            )


def w(*shape: int) -> np.ndarray:
    return RNG.normal(0, 0.3, shape).astype(np.float32)


CONV_CASES: dict[str, Callable[[], onnx.ModelProto]] = {
    "conv_bias_stride_pads": lambda: model_of(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])],
        ["N", 3, 9, 9],
        inits={"w": w(4, 3, 3, 3), "b": w(4)},
    ),
    "conv_asymmetric_pads_dilation": lambda: model_of(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[0, 1, 2, 1], dilations=[2, 1])],
        ["N", 3, 9, 9],
        inits={"w": w(4, 3, 3, 3)},
    ),
    "conv_same_upper_groups": lambda: model_of(
        [
            helper.make_node(
                "Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2], group=3
            )
        ],
        ["N", 6, 8, 8],
        inits={"w": w(6, 2, 3, 3)},
    ),
    "batchnorm_relu_maxpool": lambda: model_of(
        [
            helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["bn"], epsilon=1e-3),
            helper.make_node("Relu", ["bn"], ["r"]),
            helper.make_node(
                "MaxPool", ["r"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
            ),
        ],
        ["N", 4, 9, 9],
        inits={"s": w(4), "b": w(4), "m": w(4), "v": np.abs(w(4)) + 0.5},
    ),
    "maxpool_ceil": lambda: model_of(
        [
            helper.make_node(
                "MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1
            )
        ],
        ["N", 2, 7, 7],
    ),
    "avgpool_exclude_pad": lambda: model_of(
        [
            helper.make_node(
                "AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
            )
        ],
        ["N", 2, 8, 8],
    ),
    "avgpool_include_pad": lambda: model_of(
        [
            helper.make_node(
                "AveragePool",
                ["x"],
                ["y"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                count_include_pad=1,
            )
        ],
        ["N", 2, 6, 6],
    ),
    "global_pools": lambda: model_of(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["a"]),
            helper.make_node("GlobalMaxPool", ["x"], ["m"]),
            helper.make_node("Concat", ["a", "m"], ["y"], axis=1),
        ],
        ["N", 3, 5, 5],
    ),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_and_pool_ops_match_onnxruntime(case: str) -> None:
    m = CONV_CASES[case]()
    dims = m.graph.input[0].type.tensor_type.shape.dim[1:]
    assert_matches(m, (2, *[int(d.dim_value) for d in dims]))


ACTIVATIONS = [
    ("Relu", {}),
    ("Sigmoid", {}),
    ("Tanh", {}),
    ("LeakyRelu", {"alpha": 0.1}),
    ("Elu", {"alpha": 0.7}),
    ("Selu", {}),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
    ("HardSwish", {}),
    ("Softplus", {}),
    ("Erf", {}),
    ("Exp", {}),
    ("Abs", {}),
    ("Neg", {}),
]


@pytest.mark.parametrize(("name", "attrs"), ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activations_match_onnxruntime(name: str, attrs: dict) -> None:
    assert_matches(
        model_of([helper.make_node(name, ["x"], ["y"], **attrs)], ["N", 3, 4]), (2, 3, 4)
    )


def test_clip_as_inputs_and_as_attributes() -> None:
    lo, hi = np.array(0.0, np.float32), np.array(6.0, np.float32)
    m = model_of(
        [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], ["N", 8], inits={"lo": lo, "hi": hi}
    )
    assert_matches(m, (2, 8))
    old = model_of([helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=0.5)], ["N", 8], opset=10)
    assert_matches(old, (2, 8))


def test_classifier_head_shapes_survive_dynamic_batch() -> None:
    """The pattern torch.onnx exports for x.view(x.size(0), -1): Shape-Gather-Unsqueeze-Concat."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"]),
        helper.make_node("Shape", ["p"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["p", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "W", "B"], ["g"], transB=1),
        helper.make_node("Softmax", ["g"], ["y"], axis=1),
    ]
    inits = {
        "zero": np.array(0, np.int64),
        "ax0": np.array([0], np.int64),
        "minus1": np.array([-1], np.int64),
        "W": w(2, 4),
        "B": w(2),
    }
    assert_matches(model_of(nodes, ["N", 4, 5, 5], ["N", 2], inits), (1, 4, 5, 5))


def test_elementwise_matmul_transpose_and_reductions() -> None:
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["t", "M"], ["mm"]),
        helper.make_node("Mul", ["mm", "k"], ["m1"]),
        helper.make_node("Sub", ["m1", "k"], ["s1"]),
        helper.make_node("Div", ["s1", "two"], ["d1"]),
        helper.make_node("Add", ["d1", "k"], ["a1"]),
        helper.make_node("ReduceMean", ["a1"], ["r"], axes=[1], keepdims=0),
        helper.make_node("Flatten", ["r"], ["y"], axis=1),
    ]
    inits = {"M": w(3, 5), "k": w(5), "two": np.array(2.0, np.float32)}
    assert_matches(model_of(nodes, ["N", 3, 4], inits=inits), (2, 3, 4))


def test_gemm_with_alpha_beta_and_transposed_a() -> None:
    nodes = [helper.make_node("Gemm", ["x", "W", "C"], ["y"], alpha=0.5, beta=2.0, transA=0)]
    assert_matches(model_of(nodes, ["N", 4], inits={"W": w(4, 3), "C": w(3)}), (2, 4))


def test_pad_slice_squeeze_and_resize() -> None:
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"),
        helper.make_node("Slice", ["p", "st", "en", "ax"], ["s"]),
        helper.make_node("Resize", ["s", "", "scales"], ["r"], mode="linear"),
        helper.make_node("Unsqueeze", ["r", "ax4"], ["u"]),
        helper.make_node("Squeeze", ["u", "ax4"], ["y"]),
    ]
    inits = {
        "pads": np.array([0, 0, 1, 2, 0, 0, 1, 2], np.int64),
        "st": np.array([1], np.int64),
        "en": np.array([-1], np.int64),
        "ax": np.array([3], np.int64),
        "scales": np.array([1, 1, 2, 2], np.float32),
        "ax4": np.array([4], np.int64),
    }
    assert_matches(model_of(nodes, ["N", 2, 5, 5], inits=inits), (2, 2, 5, 5))


def test_old_opset_softmax_coerces_to_2d() -> None:
    m = model_of([helper.make_node("Softmax", ["x"], ["y"], axis=1)], ["N", 2, 3], opset=11)
    assert_matches(m, (2, 2, 3))


def magnitudes(m: onnx.ModelProto) -> ort.InferenceSession:
    """The model with every float initializer replaced by its absolute value and a Softmax
    left out: on |x| it gives, for a network of convolutions, ReLUs, max-pools and a linear
    head, the sum of the magnitudes of the terms each output adds up."""
    a = onnx.ModelProto()
    a.CopyFrom(m)
    for i, t in enumerate(a.graph.initializer):
        w = numpy_helper.to_array(t)
        if w.dtype.kind == "f":
            a.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.abs(w), t.name))
    for node in [n for n in a.graph.node if n.op_type == "Softmax"]:
        for other in a.graph.node:
            other.input[:] = [node.input[0] if i == node.output[0] else i for i in other.input]
        a.graph.node.remove(node)
    return ort.InferenceSession(a.SerializeToString(), providers=["CPUExecutionProvider"])


def test_tiny_test_classifiers_match(make_model: Callable[..., Path]) -> None:
    for name, variant in [
        ("tiny", {}),
        ("tiny-nhwc", {"layout": "NHWC"}),
        ("tiny-softmax", {"softmax": True}),
        ("tiny-fp16", {"dtype": "float16"}),
    ]:
        m = onnx.load(str(make_model(name, **variant)))
        shape = (2, 32, 32, 3) if variant.get("layout") == "NHWC" else (2, 3, 32, 32)
        x = RNG.normal(size=shape).astype(variant.get("dtype", "float32"))
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            out = to_torch(m)(torch.from_numpy(x.astype(np.float32))).numpy()
        ref = s.run(None, {"input": x})[0].astype(np.float32)
        if "dtype" in variant:  # one FP16 ulp where the output is FP16
            np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-3)
            continue
        # FP32 sums round at eps relative to the sum of their terms' magnitudes, not to their
        # result (a logit of -0.155 cancelled terms of hundreds and differed by 1.5e-5): the
        # bound is eps x the same network on |weights| and |x|; a softmax moves a probability
        # by at most half the largest logit change.
        scale = magnitudes(m).run(None, {"input": np.abs(x)})[0]
        if variant.get("softmax"):
            scale = 0.5 * scale.max(axis=1, keepdims=True)
        bound = np.finfo(np.float32).eps * scale
        assert (np.abs(out - ref) <= bound).all(), (name, out, ref, bound)


def test_unsupported_operator_is_named_in_one_user_error() -> None:
    nodes = [
        helper.make_node("TopK", ["x", "k"], ["y", "i"]),
    ]
    g = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.array([2], np.int64), "k")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelRefused, match="TopK"):
        to_torch(m)
    assert "Conv" in supported_ops() and "TopK" not in supported_ops()
