"""Tiny real classifiers for tests: random conv features plus a logistic-regression head fit
on the real PneumoniaMNIST train split, written as ONNX with onnx.helper (no torch)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from packager.shipped.preprocess import Preprocess

SIZE = 32
PRE = Preprocess(
    size=SIZE, channels=3, layout="NCHW", scale=1 / 255, mean=(0.5,), std=(0.5,), dtype="float32"
)


def _features_graph(w1: np.ndarray, w2: np.ndarray) -> list[onnx.NodeProto]:
    return [
        helper.make_node("Conv", ["x", "w1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
    ]


def _conv_weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    w1 = rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (16, 8, 3, 3)).astype(np.float32)
    return w1, w2


@cache
def fitted_head(data: str) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression on the conv features of the train split (seeded, deterministic)."""
    w1, w2 = _conv_weights()
    g = helper.make_graph(
        _features_graph(w1, w2),
        "features",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", 256])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    with np.load(data) as npz:
        images, labels = npz["train_images"], npz["train_labels"].reshape(-1)
    feats = sess.run(None, {"x": PRE(images)})[0].astype(np.float64)
    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    z = (feats - mu) / sd
    y = labels.astype(np.float64)
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(400):  # plain gradient descent with a little L2
        p = 1 / (1 + np.exp(-(z @ w + b)))
        w -= 0.5 * (z.T @ (p - y) / len(y) + 1e-3 * w)
        b -= 0.5 * float((p - y).mean())
    # Fold standardisation into a 2-logit Gemm: logit1 - logit0 = z.w + b.
    wf = w / sd
    bf = b - float(mu @ wf)
    weight = np.stack([np.zeros_like(wf), wf], axis=1).astype(np.float32)  # (256, 2)
    bias = np.array([0.0, bf], np.float32)
    return weight, bias


def make_classifier(
    path: Path,
    data: str,
    *,
    layout: str = "NCHW",
    batch: int | str = "N",
    opset: int = 17,
    softmax: bool = False,
    dtype: str = "float32",
    head_scale: float = 1.0,
) -> Path:
    """Write a small real pneumonia classifier; variants cover what models from elsewhere do."""
    w1, w2 = _conv_weights()
    weight, bias = fitted_head(data)
    nodes = _features_graph(w1, w2)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(weight * head_scale, "W"),
        numpy_helper.from_array(bias * head_scale, "B"),
    ]
    in_name = "input"
    pre: list[onnx.NodeProto] = []
    elem = TensorProto.FLOAT16 if dtype == "float16" else TensorProto.FLOAT
    src = in_name
    if dtype == "float16":
        pre.append(helper.make_node("Cast", [src], ["x32"], to=TensorProto.FLOAT))
        src = "x32"
    if layout == "NHWC":
        pre.append(helper.make_node("Transpose", [src], ["xt"], perm=[0, 3, 1, 2]))
        src = "xt"
    pre.append(helper.make_node("Identity", [src], ["x"]))
    last = "logits"
    post = [helper.make_node("Gemm", ["f", "W", "B"], [last])]
    if softmax:
        post.append(helper.make_node("Softmax", [last], ["probs"], axis=1))
        last = "probs"
    if dtype == "float16":
        post.append(helper.make_node("Cast", [last], ["out16"], to=TensorProto.FLOAT16))
        last = "out16"
    post.append(helper.make_node("Identity", [last], ["output"]))
    shape = [batch, 3, SIZE, SIZE] if layout == "NCHW" else [batch, SIZE, SIZE, 3]
    g = helper.make_graph(
        pre + nodes + post,
        "tiny-pneumonia",
        [helper.make_tensor_value_info(in_name, elem, shape)],
        [helper.make_tensor_value_info("output", elem, [batch, 2])],
        inits,
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", opset)], producer_name="packager-tests"
    )
    m.ir_version = min(m.ir_version, 8)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def make_quantized(src: Path, dst: Path, data: str, fmt: str, symmetric: bool = False) -> Path:
    """`src` quantized by onnxruntime.quantization itself, as a user would before packaging:
    "QOperator" (QLinearConv, com.microsoft.QGemm) or "QDQ" (Q/DQ pairs around float ops),
    calibrated on the val split; `symmetric` gives int8 activations with zero points of 0."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from packager.convert.ort_quant import CalibrationReader

    with np.load(data) as npz:
        calibration = PRE(npz["val_images"][:128])
    # The fitted head gives two features that are all but dead on the train split weights
    # hundreds of times the others (their standard deviation is ~0); one INT8 scale cannot hold
    # both, and every other weight would round to 0. Zeroed first, as one prunes before
    # quantizing: in float this changes 1 of the 624 test decisions.
    m = onnx.load(str(src))
    w_init = next(i for i in m.graph.initializer if i.name == "W")
    w = numpy_helper.to_array(w_init).copy()
    col = w[:, 1]  # the positive logit's weights (the other column is 0)
    col[np.abs(col) > 30 * np.median(np.abs(col))] = 0
    w_init.CopyFrom(numpy_helper.from_array(w, "W"))
    pruned = dst.with_name(f"{dst.stem}-float.onnx")
    onnx.save(m, str(pruned))
    quantize_static(
        str(pruned),
        str(dst),
        CalibrationReader(calibration, "input", 16),
        quant_format=QuantFormat.QOperator if fmt == "QOperator" else QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else {},
    )
    return dst


def make_custom_op(src: Path, dst: Path, domain: str, op_type: str) -> Path:
    """`src` with its first Relu replaced by `domain`.`op_type`, an operator no runtime has."""
    m = onnx.load(str(src))
    node = next(n for n in m.graph.node if n.op_type == "Relu")
    node.op_type, node.domain = op_type, domain
    m.opset_import.append(helper.make_opsetid(domain, 1))
    onnx.checker.check_model(m)  # the checker takes unknown domains: intake passes it
    onnx.save(m, str(dst))
    return dst


def make_three_class(path: Path, data: str, dataset: Path) -> Path:
    """A 3-class classifier and its dataset: PneumoniaMNIST's classes plus "bright-normal", the
    normal images brighter than the median normal image of their split (written to `dataset`),
    with a softmax-regression head (scikit-learn) on the same conv features."""
    from sklearn.linear_model import LogisticRegression

    w1, w2 = _conv_weights()
    out: dict[str, np.ndarray] = {}
    with np.load(data) as npz:
        for split in ("train", "val", "test"):
            images, labels = npz[f"{split}_images"], npz[f"{split}_labels"].reshape(-1)
            labels = labels.astype(np.int64)
            normal = labels == 0
            bright = images.reshape(len(images), -1).mean(1)
            labels[normal & (bright > np.median(bright[normal]))] = 2
            out[f"{split}_images"], out[f"{split}_labels"] = images, labels[:, None]
    np.savez_compressed(dataset, **out)
    g = helper.make_graph(
        _features_graph(w1, w2),
        "features",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", 256])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    fit = np.random.default_rng(3).choice(len(out["train_images"]), 1500, replace=False)
    feats = sess.run(None, {"x": PRE(out["train_images"][fit])})[0].astype(np.float64)
    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    y = out["train_labels"][fit, 0]
    clf = LogisticRegression(max_iter=500, C=1.0).fit((feats - mu) / sd, y)
    weight = (clf.coef_ / sd).T.astype(np.float32)  # (256, 3), standardisation folded in
    bias = (clf.intercept_ - (clf.coef_ / sd) @ mu).astype(np.float32)
    nodes = [
        helper.make_node("Identity", ["input"], ["x"]),
        *_features_graph(w1, w2),
        helper.make_node("Gemm", ["f", "W", "B"], ["output"]),
    ]
    g = helper.make_graph(
        nodes,
        "three-class",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(bias, "B"),
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path
