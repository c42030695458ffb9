"""packager/runtime/validate.py's helpers on small real inputs: the gate lines' recorded values, the
output kind, evaluate() and the batching of predict_all() on a real ONNX Runtime session (a
two-layer graph built here), each against a plain recomputation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from packager.core.config import parse_config
from packager.core.errors import UserError
from packager.core.metrics import clinical
from packager.runtime.validate import (
    CLINICAL_GATES,
    evaluate,
    gate_checks,
    is_clinical_gate,
    output_kind,
    predict_all,
    save_validation,
)


def _cfg(**sections: dict) -> object:
    return parse_config(sections, Path.cwd())


def _two(p: np.ndarray) -> np.ndarray:
    return np.stack([1 - p, p], axis=1)


def test_gate_lines_record_value_limit_and_reason() -> None:
    # 200 of 300 positives found by the target, 250 by the reference: values with more than
    # six decimals, so the recorded rounding shows.
    y = np.array([1] * 300 + [0] * 10)
    tgt, ref = np.full(310, 0.1), np.full(310, 0.1)
    tgt[:200], ref[:250] = 0.9, 0.9
    c = clinical(_two(tgt), y, 1, 0.5, reference=_two(ref))
    lines = {
        ch.name: ch
        for ch in gate_checks(
            c, _cfg(gates={"min_sensitivity": 0.6, "max_sensitivity_drop": 0.2}), True
        )
    }
    assert list(lines)[:3] == ["finite_outputs", "min_sensitivity", "max_sensitivity_drop"]
    fin = lines["finite_outputs"]
    assert (fin.value, fin.limit, fin.passed, fin.reason) == (True, True, True, "")
    sens = lines["min_sensitivity"]
    assert (sens.value, sens.limit, sens.passed) == (0.666667, 0.6, True)
    drop = lines["max_sensitivity_drop"]
    assert (drop.value, drop.limit, drop.passed) == (0.166667, 0.2, True)
    tgt[5] = np.nan
    c = clinical(_two(tgt), y, 1, 0.5)
    fin = gate_checks(c, _cfg(), False)[0]
    assert (fin.value, fin.passed, fin.reason) == (False, False, "NaN or Inf scores")


def test_is_clinical_gate_names() -> None:
    for name in CLINICAL_GATES:
        assert is_clinical_gate(name) and is_clinical_gate(f"{name}[site=B]")
    assert is_clinical_gate("min_subgroup_sensitivity[ward=A[2]]")  # a value holding "["
    for name in ("latency_p50_ms", "selftest", "min_sensitivity_x", "[min_sensitivity]", ""):
        assert not is_clinical_gate(name)


@pytest.mark.parametrize(
    ("configured", "softmax", "kind"),
    [
        ("auto", True, "probabilities"),
        ("auto", False, "logits"),
        ("logits", True, "logits"),
        ("probabilities", False, "probabilities"),
    ],
)
def test_output_kind(configured: str, softmax: bool, kind: str) -> None:
    assert output_kind(_cfg(labels={"output": configured}), softmax) == kind


def test_evaluate_softmaxes_logits_and_counts_on_the_positive_class() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (60, 3))
    labels = rng.integers(0, 3, 60)
    cfg = _cfg(labels={"names": ["a", "b", "c"], "positive": "c", "threshold": 0.4})
    probs, c = evaluate(logits, labels, cfg, "logits", None)
    e = np.exp(logits - logits.max(1, keepdims=True))
    expected = (e / e.sum(1, keepdims=True)).astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(probs, expected)
    pred = expected[:, 2] >= 0.4
    assert c.confusion["tp"] == int((pred & (labels == 2)).sum())
    assert c.threshold == 0.4 and c.positives == int((labels == 2).sum())
    # probabilities pass through (float32-rounded, no softmax), with the reference compared
    p = e / e.sum(1, keepdims=True)
    ref = np.roll(p, 1, axis=0)
    probs, c = evaluate(p, labels, cfg, "probabilities", ref)
    np.testing.assert_array_equal(probs, p.astype(np.float32).astype(np.float64))
    flips = np.flatnonzero((probs[:, 2] >= 0.4) != (ref[:, 2] >= 0.4)).tolist()
    assert flips and c.flipped == flips
    with pytest.raises(UserError, match="gives 3 scores but \\[labels\\] names lists 2"):
        evaluate(logits, labels, _cfg(), "logits", None)


def test_save_validation_stores_float32(tmp_path: Path) -> None:
    labels = np.array([0, 1, 1])
    probs = _two(np.array([0.1, 0.123456789, 0.9]))
    save_validation(tmp_path, labels, probs, probs[::-1])
    with np.load(tmp_path / "validation.npz") as v:
        assert sorted(v.files) == ["labels", "probs", "reference"]
        np.testing.assert_array_equal(v["labels"], labels)
        assert v["probs"].dtype == np.float32 == v["reference"].dtype
        np.testing.assert_array_equal(v["probs"], probs.astype(np.float32))
        np.testing.assert_array_equal(v["reference"], probs[::-1].astype(np.float32))
    save_validation(tmp_path, labels, probs, None)
    with np.load(tmp_path / "validation.npz") as v:
        assert sorted(v.files) == ["labels", "probs"]


class _Session:
    """A real ONNX Runtime session over a graph y = tanh(x @ W) built here."""

    def __init__(self, path: Path, batch: int | str) -> None:
        w = np.random.default_rng(0).normal(0, 1, (5, 2)).astype(np.float32)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 5])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2])],
            [helper.make_tensor("w", TensorProto.FLOAT, [5, 2], w.ravel())],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, path)
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.w = w
        self.calls: list[int] = []

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        return self.session.run(None, {"x": x})[0]


@pytest.mark.parametrize(
    ("batch", "size", "fixed", "calls"), [("N", 4, None, [4, 4, 2]), (4, 3, 4, [4, 4, 4])]
)
def test_predict_all_batches_and_trims_padding(
    batch: int | str, size: int, fixed: int | None, calls: list[int], tmp_path: Path
) -> None:
    runner = _Session(tmp_path / "m.onnx", batch)
    x = np.random.default_rng(1).normal(0, 1, (10, 5)).astype(np.float32)
    out = predict_all(runner, x, size, fixed)
    assert runner.calls == calls
    assert out.dtype == np.float32 and out.shape == (10, 2)
    np.testing.assert_allclose(out, np.tanh(x.astype(np.float64) @ runner.w), atol=1e-5)


@pytest.mark.parametrize(
    ("configured", "softmax", "kind"),
    [
        ("auto", False, "sigmoid-logits"),  # a multi-label model's logits: a sigmoid each
        ("logits", True, "sigmoid-logits"),
        ("auto", True, "probabilities"),
        ("probabilities", False, "probabilities"),
    ],
)
def test_output_kind_of_a_multilabel_model(configured: str, softmax: bool, kind: str) -> None:
    labels = {"task": "multilabel", "names": ["a", "b"], "output": configured}
    assert output_kind(_cfg(labels=labels), softmax) == kind


def test_finite_outputs_is_decided_on_every_score() -> None:
    c = clinical(_two(np.array([0.2, 0.8])), np.array([0, 1]), 1, 0.5)
    fin = gate_checks(c, _cfg(), False)[0].to_dict()
    assert (fin["name"], fin["decided_on"]) == ("finite_outputs", "every output")


def test_custom_metric_lines_are_clinical() -> None:
    assert is_clinical_gate("custom:balanced_accuracy:min")
    assert not is_clinical_gate("xcustom:balanced_accuracy:min")
    # the name's first "[" ends the gate: a subgroup value may itself hold "[" and "]"
    assert is_clinical_gate("min_sensitivity[finding=a][site=B[1]]")
    assert not is_clinical_gate("min_sensitivityx[site=B]")


def test_evaluate_names_the_classes_in_the_confusion() -> None:
    cfg = _cfg(labels={"names": ["normal", "pneumonia", "covid"], "positive": "covid"})
    scores = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1]])
    labels = np.array([0, 1, 2, 1])
    _, c = evaluate(scores, labels, cfg, "probabilities", None)
    want = clinical(scores, labels, 2, 0.5, None, ["normal", "pneumonia", "covid"])
    assert c == want and c.classes is not None
    assert list(c.classes) == ["normal", "pneumonia", "covid"]
