"""The shipped self-test's replay of a multi-label model, in-process (issue 28): a hand-built
bundle whose ONNX model returns its three input channels as three findings' probabilities, each
finding decided at its own threshold. Every verdict is recounted here with loops over cases and
findings; the operating points' refusals are checked on the JSON a build writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from packager.shipped import selftest as shipped
from packager.shipped.preprocess import Preprocess
from tests.test_trust_replay import TOL, black_png, bundle_code, seal

NAMES = ["a", "b", "c"]
RECORDED = {"c": 0.75, "a": 0.5, "b": 0.25}  # JSON order is not output order
MOVED = RECORDED | {"b": 0.25 + 3 * TOL}  # runtime.json's b moved since the recording


def findings_are_the_pixels(path: Path) -> None:
    """(N, 3, 1, 1) -> (N, 3): each channel is one finding's probability."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 1, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 3])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "findings", [x], [y], [shape]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def runtime_json(now: dict[str, float]) -> dict[str, Any]:
    """runtime.json as a build writes it for a multi-label model."""
    return {
        "runner_options": {"model": "model.onnx"},
        "labels": NAMES,
        "positive": None,
        "threshold": 0.5,
        "task": "multilabel",
        "thresholds": now,
        "output": "probabilities",
        "fixed_batch": None,
    }


def selftest_json(recorded: dict[str, float]) -> dict[str, Any]:
    """selftest.json as a build writes it for a multi-label model: no positive class."""
    meta = {"batch_size": 2, "tolerance": TOL, "positive_index": None, "threshold": 0.5}
    return meta | {"thresholds": recorded}


def make_bundle(root: Path, got: np.ndarray, golden: np.ndarray, now: dict[str, float]) -> Path:
    """Tensor cases with P = `got` here against `golden` recorded, then a black PNG (0 for
    every finding both times)."""
    bundle_code(root)
    findings_are_the_pixels(root / "model.onnx")
    pre = Preprocess(1, 3, "NCHW", 1 / 255, (0.0,) * 3, (1.0,) * 3, "float32", formats=("png",))
    (root / "preprocess.json").write_text(pre.to_json())
    (root / "runtime.json").write_text(json.dumps(runtime_json(now)))
    (root / "selftest.json").write_text(json.dumps(selftest_json(RECORDED)))
    png = black_png()
    np.savez(
        root / "selftest.npz",
        x=got.astype(np.float32).reshape(-1, 3, 1, 1),
        probs=golden.astype(np.float32),
        kinds=np.array([f"kind{i}" for i in range(len(got))]),
        raw_bytes=np.frombuffer(png, np.uint8),
        raw_ends=np.array([len(png)], np.int64),
        raw_names=np.array(["black.png"]),
        raw_kinds=np.array(["png"]),
        raw_probs=np.zeros((1, 3), np.float32),
    )
    seal(root)
    return root


def recount(got: np.ndarray, golden: np.ndarray, now: dict[str, float]) -> dict[str, Any]:
    """The verdict by hand, one decision per case and finding (+ the black PNG)."""
    got, golden = np.vstack([got, np.zeros((1, 3))]), np.vstack([golden, np.zeros((1, 3))])
    failing, flips, decided, undecided = [], [], 0, 0
    worst, worst_diff = 0, -1.0
    for i in range(len(got)):
        diffs = [abs(got[i, k] - golden[i, k]) for k in range(3)]
        if max(diffs) > worst_diff:
            worst, worst_diff = i, max(diffs)
        if max(diffs) > TOL:
            failing.append(i)
        flipped = False
        for k, name in enumerate(NAMES):
            if abs(golden[i, k] - RECORDED[name]) <= TOL:
                undecided += 1
                continue
            decided += 1
            flipped |= (got[i, k] >= now[name]) != (golden[i, k] >= RECORDED[name])
        if flipped:
            flips.append(i)
    col = max(range(3), key=lambda k: abs(got[worst, k] - golden[worst, k]))
    return {
        "failing": failing,
        "flips": flips,
        "decided": decided,
        "undecided": undecided,
        "worst": (worst, float(golden[worst, col]), float(got[worst, col])),
    }


def test_every_finding_is_replayed_at_its_own_threshold(tmp_path: Path) -> None:
    """Case 1 flips in b alone (its threshold moved); case 2 differs most in c, though a's
    probabilities are the largest; case 3 sits within the tolerance of a's threshold."""
    golden = np.array(
        [
            [0.125, 0.875, 0.875],
            [0.875, 0.25 + 2 * TOL, 0.125],
            [0.875, 0.875, 0.25],
            [0.5 + TOL / 2, 0.875, 0.125],
        ]
    )
    got = golden.copy()
    got[2] = [0.875 + TOL, 0.875, 0.25 + 4 * TOL]
    got[3, 0] = 0.5 - TOL / 4  # within tolerance; its decision flips but is not judged
    bundle = make_bundle(tmp_path / "bundle", got, golden, MOVED)
    code = shipped.self_test(bundle, tmp_path / "record.json")
    record = json.loads((tmp_path / "record.json").read_text())
    checks = {c["name"]: c for c in record["checks"]}
    want = recount(got, golden, MOVED)
    assert want["flips"] == [1] and want["failing"] == [2] and want["undecided"] == 1
    p, d = checks["probabilities"], checks["decisions"]
    assert p["failing_cases"] == want["failing"] and p["cases"] == 5
    case, g, v = want["worst"]
    assert p["worst"] == {"case": case, "kind": f"kind{case}", "golden": g, "got": v}
    assert (case, g, v) == (2, 0.25, 0.25 + 4 * TOL)  # c's probabilities, not a's
    assert d["differing_cases"] == want["flips"]
    assert d["cases"] == want["decided"] == 14
    assert d["within_tolerance_of_threshold"] == want["undecided"]
    assert code == 1 and record["verdict"] == "rejected"


def test_a_multilabel_bundle_replaying_as_recorded_is_accepted(tmp_path: Path) -> None:
    golden = np.array([[0.125, 0.875, 0.875], [0.875, 0.125, 0.5]])
    bundle = make_bundle(tmp_path / "bundle", golden, golden, RECORDED)
    assert shipped.self_test(bundle, tmp_path / "record.json") == 0
    checks = json.loads((tmp_path / "record.json").read_text())["checks"]
    assert [c["status"] for c in checks] == ["passed"] * 5
    assert checks[-1]["cases"] == recount(golden, golden, RECORDED)["decided"] == 9


DISAGREE = "runtime.json and selftest.json disagree on whether the model is multi-label"
EVERY = "selftest.json and runtime.json must give a threshold for every finding"
SINGLE_RUNTIME = {"threshold": 0.5, "labels": ["normal", "pneumonia"], "positive": "pneumonia"}
SINGLE_META = {"positive_index": 1, "threshold": 0.5}


@pytest.mark.parametrize(
    ("config", "meta", "message"),
    [
        (runtime_json(RECORDED), SINGLE_META, DISAGREE),
        (SINGLE_RUNTIME, selftest_json(RECORDED), DISAGREE),
        # one side of the disagreement alone: a positive class beside the thresholds
        (runtime_json(RECORDED), selftest_json(RECORDED) | {"positive_index": 1}, DISAGREE),
        (SINGLE_RUNTIME, selftest_json(RECORDED) | {"positive_index": 1}, DISAGREE),
        (SINGLE_RUNTIME | {"task": "binary"}, SINGLE_META | {"thresholds": {}}, DISAGREE),
        (runtime_json({"a": 0.5, "b": 0.25}), selftest_json(RECORDED), EVERY),
        (runtime_json(RECORDED), selftest_json({"a": 0.5, "b": 0.25}), EVERY),
        (runtime_json(RECORDED | {"z": 0.5}), selftest_json(RECORDED), EVERY),
        (runtime_json(RECORDED), selftest_json(RECORDED | {"z": 0.5}), EVERY),
        (runtime_json({}), selftest_json({}), EVERY),
    ],
    ids=[
        "runtime-multilabel",
        "golden-multilabel",
        "golden-both",
        "golden-both-runtime-single",
        "empty-thresholds-single",
        "runtime-missing-one",
        "golden-missing-one",
        "runtime-extra",
        "golden-extra",
        "none-at-all",
    ],
)
def test_operating_points_that_disagree_are_refused(
    config: dict[str, Any], meta: dict[str, Any], message: str
) -> None:
    with pytest.raises(shipped.Refused) as exc:
        shipped.operating_points(meta, config)
    assert str(exc.value) == f"{message}; rebuild the bundle"
    assert exc.value.code == 2


def test_operating_points_as_a_build_writes_them() -> None:
    cols, recorded, now = shipped.operating_points(selftest_json(RECORDED), runtime_json(MOVED))
    assert cols == [0, 1, 2]
    assert recorded.tolist() == [0.5, 0.25, 0.75] and now.tolist() == [0.5, 0.25 + 3 * TOL, 0.75]
    cols, recorded, now = shipped.operating_points(
        SINGLE_META, SINGLE_RUNTIME | {"threshold": 0.25}
    )
    assert (cols, recorded.tolist(), now.tolist()) == ([1], [0.5], [0.25])


def test_a_refused_operating_point_stops_the_self_test(tmp_path: Path) -> None:
    golden = np.array([[0.125, 0.875, 0.875]])
    bundle = make_bundle(tmp_path / "bundle", golden, golden, {"a": 0.5, "b": 0.25})
    with pytest.raises(shipped.Refused, match=EVERY):
        shipped.self_test(bundle, tmp_path / "record.json")
