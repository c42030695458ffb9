"""The shipped self-test's replay, in-process on a bundle built by hand (issue 28): the shipped
code files, a one-node ONNX model (Identity) run by ONNX Runtime through the cpu-onnxruntime
runtime.py, and a golden set whose probabilities are binary fractions, so every comparison with
the tolerance and the threshold can sit exactly on its boundary. Each verdict is recounted here
with plain loops. Fast, so `make mutate` runs it against every mutant of selftest.py."""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

import packager.targets
from packager.core import documents
from packager.shipped import SHIPPED
from packager.shipped import selftest as shipped
from packager.shipped.preprocess import Preprocess

TARGETS_DIR = Path(packager.targets.__file__).parent

TOL = 2**-6  # 0.015625: exact in binary, like every probability below
RECORDED = 0.5  # the threshold the golden set was recorded at


def positive_is_the_pixel(path: Path, batch: int | None = None) -> None:
    """(N, 1, 1, 1) -> (N, 2): [1 - v, v], so P(positive) is the input value itself; N fixed
    to `batch` when given."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch or "n", 1, 1, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch or "n", 2])
    consts = [
        helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["v"]),
        helper.make_node("Sub", ["one", "v"], ["u"]),
        helper.make_node("Concat", ["u", "v"], ["y"], axis=1),
    ]
    graph = helper.make_graph(nodes, "pixel", [x], [y], initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def black_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def bundle_code(root: Path, target: str = "cpu_onnxruntime") -> None:
    """The shipped code files and `target`'s runtime.py in a new bundle folder."""
    root.mkdir(parents=True)
    for name in ("predict.py", "selftest.py", "integrity.py", "ort_session.py", "preprocess.py"):
        shutil.copy(SHIPPED / name, root / name)
    shutil.copy(TARGETS_DIR / target / "runtime.py", root / "runtime.py")


def seal(root: Path) -> None:
    """manifest.json listing every file of the bundle with its sha256, as a build writes it."""
    (root / "manifest.json").unlink(missing_ok=True)
    files = {
        p.name: {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
        for p in sorted(root.iterdir())
    }
    manifest = {"name": "tiny", "version": "1.0.0", "target": "cpu-onnxruntime", "files": files}
    (root / "manifest.json").write_text(json.dumps(manifest | {"precision": "fp32"}))


def make_bundle(
    root: Path,
    got: list[float],
    golden: list[float],
    threshold: float,
    fixed: int | None = None,
    formats: tuple[str, ...] = ("png",),
    target: str = "cpu_onnxruntime",
) -> Path:
    """A bundle whose runtime returns P(positive) = `got` for each case (the inputs are the
    probabilities) against the recorded `golden` ones, then one raw file: a black 1x1 PNG,
    P(positive) 0 both times (the case after the others)."""
    bundle_code(root, target)
    positive_is_the_pixel(root / "model.onnx", fixed)
    pre = Preprocess(1, 1, "NCHW", 1 / 255, (0.0,), (1.0,), "float32", formats=formats)
    (root / "preprocess.json").write_text(pre.to_json())
    runtime = {
        "runner_options": {"model": "model.onnx", "precision": "fp32"},
        "threshold": threshold,
        "output": "probabilities",
        "fixed_batch": fixed,
    }
    (root / "runtime.json").write_text(json.dumps(runtime))
    meta = {"batch_size": 3, "tolerance": TOL, "positive_index": 1, "threshold": RECORDED}
    (root / "selftest.json").write_text(json.dumps(meta))
    png = black_png()
    np.savez(
        root / "selftest.npz",
        x=np.asarray(got, np.float32).reshape(-1, 1, 1, 1),
        probs=np.stack([1 - np.asarray(golden), np.asarray(golden)], axis=1).astype(np.float32),
        kinds=np.array([f"kind{i}" for i in range(len(got))]),
        raw_bytes=np.frombuffer(png, np.uint8),
        raw_ends=np.array([len(png)], np.int64),
        raw_names=np.array(["black.png"]),
        raw_kinds=np.array(["png"]),
        raw_probs=np.array([[1.0, 0.0]], np.float32),
    )
    seal(root)
    return root


def recount(got: list[float], golden: list[float], threshold: float) -> dict[str, list[int]]:
    """The replay's verdict by hand: a probability beyond the tolerance fails; a decision counts
    only where the golden probability is farther than the tolerance from the recorded threshold
    (p >= threshold is positive)."""
    failing, flips, decided = [], [], []
    for i, (g, p) in enumerate(zip([*golden, 0.0], [*got, 0.0], strict=True)):  # + the PNG
        if abs(p - g) > TOL:
            failing.append(i)
        if abs(g - RECORDED) > TOL:
            decided.append(i)
            if (p >= threshold) != (g >= RECORDED):
                flips.append(i)
    return {"failing": failing, "flips": flips, "decided": decided}


def run(tmp_path: Path, got: list[float], golden: list[float], threshold: float = RECORDED):
    bundle = make_bundle(tmp_path / "bundle", got, golden, threshold)
    record_path = tmp_path / "record.json"
    code = shipped.self_test(bundle, record_path)
    record = json.loads(record_path.read_text())
    documents.Acceptance.model_validate(record)  # the published schema, closed: no stray keys
    return code, {c["name"]: c for c in record["checks"]}, record


def test_identical_outputs_are_accepted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    golden = [0.25, 0.75, 0.5, 0.5 + TOL, 0.125]
    code, checks, record = run(tmp_path, golden, golden)
    assert code == 0 and record["verdict"] == "accepted"
    assert [c["status"] for c in record["checks"]] == ["passed"] * 5
    assert checks["probabilities"]["max_abs_diff"] == 0.0
    manifest = (tmp_path / "bundle" / "manifest.json").read_bytes()
    assert record["bundle"] == {
        "name": "tiny",
        "version": "1.0.0",
        "target": "cpu-onnxruntime",
        "precision": "fp32",
        "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
    }
    assert record["record"] == "packager acceptance" and record["schema_version"] == 1
    host = record["host"]
    assert host["cores"] == os.cpu_count() and host["machine"] == platform.machine()
    assert host["python"] == platform.python_version() and host["numpy"] == np.__version__
    assert host["os"] == f"{platform.system()} {platform.release()}"
    assert host["runtime"]["runtime"] == "onnxruntime"
    if Path("/proc/cpuinfo").is_file():  # Linux: the CPU and its flags as the kernel lists them
        info = [line.partition(":") for line in Path("/proc/cpuinfo").read_text().splitlines()]
        names = [v.strip() for k, _, v in info if k.strip() == "model name"]
        flags = {f for k, _, v in info if k.strip() in ("flags", "Features") for f in v.split()}
        assert host["cpu"] == (names[-1] if names else platform.processor() or platform.machine())
        assert host["isa_flags"] == [f for f in shipped.ISA_FLAGS if f in flags]
        assert "avx2" not in flags or "avx2" in host["isa_flags"]
    assert checks["runtime"] == {"name": "runtime", "status": "passed", "kind": "main"}
    assert (tmp_path / "record.json").read_text().startswith('{\n  "bundle": {\n')  # sorted
    assert checks["decisions"] == {
        "name": "decisions",
        "status": "passed",
        "cases": 4,  # 0.5 and 0.5 + TOL are within the tolerance of the threshold
        "within_tolerance_of_threshold": 2,
        "differing_cases": [],
    }
    assert capsys.readouterr().out.startswith(
        "self-test passed: 6 golden cases (1 image files through preprocess.py: png), "
        "max |dp| 0.00e+00 (tolerance 1.6e-02), decisions identical; integrity: manifest sha256 "
    )


def test_a_difference_of_exactly_the_tolerance_passes(tmp_path: Path) -> None:
    golden = [0.25, 0.75, 0.625]
    got = [0.25 + TOL, 0.75 - TOL, 0.625 + 2 * TOL]  # the last is beyond it
    code, checks, record = run(tmp_path, got, golden)
    expected = recount(got, golden, RECORDED)
    assert expected == {"failing": [2], "flips": [], "decided": [0, 1, 2, 3]}
    p = checks["probabilities"]
    assert (p["status"], p["failing"], p["failing_cases"]) == ("failed", 1, [2])
    assert p["cases"] == 4 and p["tolerance"] == TOL
    assert p["max_abs_diff"] == 2 * TOL
    assert p["worst"] == {"case": 2, "kind": "kind2", "golden": 0.625, "got": 0.625 + 2 * TOL}
    assert checks["decisions"]["status"] == "passed"
    assert code == 1 and record["verdict"] == "rejected"


def test_a_decision_flip_within_tolerance_is_caught(tmp_path: Path) -> None:
    """runtime.json's threshold moved above a case that was positive when recorded: its
    probability is unchanged, only the decision check can reject."""
    golden = [0.25, 0.75, 0.5 + 2 * TOL, 0.5 + TOL / 2]
    threshold = 0.5 + 3 * TOL
    code, checks, record = run(tmp_path, golden, golden, threshold)
    expected = recount(golden, golden, threshold)
    assert expected == {"failing": [], "flips": [2], "decided": [0, 1, 2, 4]}
    assert checks["probabilities"]["status"] == "passed"
    d = checks["decisions"]
    assert d["status"] == "failed" and d["differing_cases"] == expected["flips"]
    assert d["cases"] == 4 and d["within_tolerance_of_threshold"] == 1
    assert code == 1 and record["verdict"] == "rejected"


def test_a_case_exactly_on_the_threshold_is_positive(tmp_path: Path) -> None:
    """The runtime's p equal to runtime.json's threshold decides positive, as when recorded."""
    golden = [0.75, 0.25]
    threshold = 0.75
    code, checks, _ = run(tmp_path, golden, golden, threshold)
    assert recount(golden, golden, threshold)["flips"] == []
    assert checks["decisions"]["differing_cases"] == []
    assert checks["decisions"]["status"] == "passed" and code == 0


def test_a_golden_case_exactly_the_tolerance_from_the_threshold_is_not_decided(
    tmp_path: Path,
) -> None:
    golden = [0.5 + TOL, 0.5 - TOL, 0.5 + 2 * TOL]
    got = [0.5 + TOL - TOL / 2, 0.5 - TOL + TOL / 2, 0.5 + 2 * TOL]
    threshold = 0.5 + TOL  # case 0 is now negative, case 1 stays negative
    code, checks, _ = run(tmp_path, got, golden, threshold)
    expected = recount(got, golden, threshold)
    assert expected == {"failing": [], "flips": [], "decided": [2, 3]}
    assert checks["decisions"]["cases"] == 2
    assert checks["decisions"]["within_tolerance_of_threshold"] == 2
    assert checks["decisions"]["differing_cases"] == [] and code == 0


def test_flips_and_misses_are_counted_in_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A probability miss that also flips, a miss that does not, and a flip alone."""
    golden = [0.5 + 4 * TOL, 0.125, 0.5 + 2 * TOL, 0.875, 0.0625]
    got = [0.5 - 4 * TOL, 0.125 + 3 * TOL, 0.5 + 2 * TOL, 0.875, 0.0625]
    threshold = 0.5 + 3 * TOL
    code, checks, record = run(tmp_path, got, golden, threshold)
    expected = recount(got, golden, threshold)
    assert expected == {"failing": [0, 1], "flips": [0, 2], "decided": [0, 1, 2, 3, 4, 5]}
    assert checks["probabilities"]["failing_cases"] == expected["failing"]
    assert checks["decisions"]["differing_cases"] == expected["flips"]
    worst = checks["probabilities"]["worst"]
    assert worst == {"case": 0, "kind": "kind0", "golden": golden[0], "got": got[0]}
    assert code == 1 and record["verdict"] == "rejected"
    out = capsys.readouterr().out
    assert out.startswith(
        "self-test FAILED: 2 of 6 cases differ beyond the tolerance 1.6e-02 and 2 decisions "
        "differ; worst case #0 (kind0): p = 0.437500 here, 0.562500 when validated "
        "(|dp| 1.25e-01); integrity: manifest sha256 "
    )


def test_an_added_file_stops_the_self_test_before_the_replay(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bundle = make_bundle(tmp_path / "bundle", [0.25], [0.25], RECORDED)
    (bundle / "numpy.py").write_text("raise SystemExit('bundle code ran')\n")
    code = shipped.self_test(bundle, tmp_path / "record.json")
    record = json.loads((tmp_path / "record.json").read_text())
    assert code == 1 and record["verdict"] == "rejected"
    assert [c["name"] for c in record["checks"]] == ["manifest"]
    assert record["checks"][0]["problems"] == ["added: numpy.py"]
    assert record["integrity"]["basis"] == "unverified"
    assert capsys.readouterr().out.startswith(
        "self-test FAILED: the bundle differs from its manifest: added: numpy.py; integrity: "
        "unverified (checked by the bundle's own code); record: "
    )


def rewrite_golden(bundle: Path, **arrays: np.ndarray | None) -> None:
    """selftest.npz with arrays replaced (None drops one), and the manifest agreeing again."""
    with np.load(bundle / "selftest.npz") as g:
        data = {k: g[k] for k in g.files}
    for k, v in arrays.items():
        if v is None:
            del data[k]
        else:
            data[k] = v
    np.savez(bundle / "selftest.npz", **data)
    seal(bundle)


def test_an_unreadable_image_file_fails_the_preprocessing_check(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Two raw files: the black PNG, then bytes that are no image (case 3, after the two
    tensor cases and the PNG). Its decision and probability cannot be checked; the record names it."""
    bundle = make_bundle(tmp_path / "bundle", [0.25, 0.75], [0.25, 0.75], RECORDED)
    png, bad = black_png(), b"\x89PNG not an image"
    rewrite_golden(
        bundle,
        raw_bytes=np.frombuffer(png + bad, np.uint8),
        raw_ends=np.array([len(png), len(png) + len(bad)], np.int64),
        raw_names=np.array(["black.png", "bad.png"]),
        raw_kinds=np.array(["png", "png-damaged"]),
        raw_probs=np.array([[1.0, 0.0], [0.5, 0.5]], np.float32),
    )
    code = shipped.self_test(bundle)  # the record beside the bundle, by default
    record = json.loads((tmp_path / "bundle.acceptance.json").read_text())
    checks = {c["name"]: c for c in record["checks"]}
    pre = checks["preprocessing"]
    assert pre["status"] == "failed" and pre["cases"] == 2 and pre["formats"] == ["png"]
    assert [(u["case"], u["kind"]) for u in pre["unreadable"]] == [(3, "png-damaged")]
    assert pre["unreadable"][0]["error"]
    assert checks["probabilities"]["cases"] == 3  # the readable ones: 0, 1 and the black PNG
    assert checks["probabilities"]["status"] == "passed"
    assert code == 1 and record["verdict"] == "rejected"
    out = capsys.readouterr().out
    assert out.startswith(
        "self-test FAILED: 1 of 2 image files unreadable through preprocess.py (png-damaged: "
    )
    assert "); 0 of 3 cases differ beyond the tolerance" in out


@pytest.mark.parametrize(
    "change",
    [
        {"kinds": np.array(["a"])},  # one kind for two tensor cases
        {"probs": np.zeros((3, 2), np.float32)},
        {"raw_kinds": np.array(["png", "png"])},
        {"raw_probs": np.zeros((2, 2), np.float32)},
        {"raw_ends": np.array([5], np.int64)},  # the one file ends before the bytes do
        {"raw_ends": np.array([10**6], np.int64)},
        {  # the first file ends before it starts
            "raw_ends": np.array([-1, len(black_png())], np.int64),
            "raw_names": np.array(["a.png", "b.png"]),
            "raw_kinds": np.array(["png", "png"]),
            "raw_probs": np.zeros((2, 2), np.float32),
        },
    ],
    ids=["kinds", "probs", "raw_kinds", "raw_probs", "short-end", "long-end", "negative-end"],
)
def test_arrays_that_do_not_fit_are_refused(tmp_path: Path, change: dict) -> None:
    bundle = make_bundle(tmp_path / "bundle", [0.25, 0.75], [0.25, 0.75], RECORDED)
    rewrite_golden(bundle, **change)
    with pytest.raises(shipped.Refused) as exc:
        shipped.self_test(bundle, tmp_path / "record.json")
    assert str(exc.value) == "selftest.npz: its arrays do not fit together; rebuild the bundle"
    assert exc.value.code == 2


def test_file_ends_that_go_backwards_are_refused(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", [0.25], [0.25], RECORDED)
    png = black_png()
    rewrite_golden(
        bundle,
        raw_bytes=np.frombuffer(png + png, np.uint8),
        raw_ends=np.array([2 * len(png) + 1, 2 * len(png)], np.int64),
        raw_names=np.array(["a.png", "b.png"]),
        raw_kinds=np.array(["png", "png"]),
        raw_probs=np.array([[1.0, 0.0], [1.0, 0.0]], np.float32),
    )
    with pytest.raises(shipped.Refused, match="its arrays do not fit together"):
        shipped.self_test(bundle, tmp_path / "record.json")


def test_an_empty_raw_file_is_unreadable_not_misfitting(tmp_path: Path) -> None:
    """Ends may repeat (an empty file): the arrays fit, the file is reported unreadable."""
    bundle = make_bundle(tmp_path / "bundle", [0.25], [0.25], RECORDED)
    png = black_png()
    rewrite_golden(
        bundle,
        raw_bytes=np.frombuffer(png, np.uint8),
        raw_ends=np.array([0, len(png)], np.int64),
        raw_names=np.array(["empty.png", "black.png"]),
        raw_kinds=np.array(["empty", "png"]),
        raw_probs=np.array([[0.5, 0.5], [0.5, 0.5]], np.float32),
    )
    shipped.self_test(bundle, tmp_path / "record.json")
    record = json.loads((tmp_path / "record.json").read_text())
    checks = {c["name"]: c for c in record["checks"]}
    assert [(u["case"], u["kind"]) for u in checks["preprocessing"]["unreadable"]] == [(1, "empty")]
    # The black PNG is case 2 (after one tensor case and the empty file): recorded here as
    # P = 0.5, it fails under its own number.
    assert checks["probabilities"]["failing_cases"] == [2]
    assert checks["probabilities"]["worst"]["case"] == 2


def test_every_image_file_unreadable_still_replays_the_tensors(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", [0.25, 0.75], [0.25, 0.75], RECORDED)
    rewrite_golden(
        bundle,
        raw_bytes=np.frombuffer(b"no image here", np.uint8),
        raw_ends=np.array([13], np.int64),
    )
    assert shipped.self_test(bundle, tmp_path / "record.json") == 1
    record = json.loads((tmp_path / "record.json").read_text())
    checks = {c["name"]: c for c in record["checks"]}
    assert checks["preprocessing"]["status"] == "failed"
    assert checks["probabilities"]["cases"] == 2 and checks["probabilities"]["failing"] == 0


def test_a_fixed_batch_model_gets_full_batches(tmp_path: Path) -> None:
    """A model whose batch is fixed at 4: 5 cases run as two padded batches of 4 (batch_size
    3 in selftest.json does not apply)."""
    golden = [0.25, 0.75, 0.125, 0.875, 0.5 + 4 * TOL]
    bundle = make_bundle(tmp_path / "bundle", golden, golden, RECORDED, fixed=4)
    assert shipped.self_test(bundle, tmp_path / "record.json") == 0


def test_a_golden_set_without_raw_files_is_refused(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", [0.25], [0.25], RECORDED)
    rewrite_golden(bundle, raw_probs=None)
    with pytest.raises(shipped.Refused) as exc:
        shipped.self_test(bundle, tmp_path / "record.json")
    assert str(exc.value) == "selftest.npz has no raw image cases; rebuild the bundle"
    assert exc.value.code == 2


def test_a_pickled_golden_set_is_never_unpickled(tmp_path: Path) -> None:
    """selftest.npz is read with allow_pickle=False: an object array that would run code when
    unpickled (here: make a folder) is refused instead."""
    marker = tmp_path / "unpickled"
    bundle = make_bundle(tmp_path / "bundle", [0.25], [0.25], RECORDED)
    kinds = np.empty(1, object)
    kinds[0] = RunsWhenUnpickled(str(marker))
    rewrite_golden(bundle, kinds=kinds)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        shipped.self_test(bundle, tmp_path / "record.json")
    assert not marker.exists()


class RunsWhenUnpickled:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.path,))


def test_a_bundle_without_its_golden_set_is_refused(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", [0.25], [0.25], RECORDED)
    (bundle / "selftest.npz").unlink()
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["files"]["selftest.npz"]  # rewritten without it: the manifest check passes
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(shipped.Refused) as exc:
        shipped.self_test(bundle, tmp_path / "record.json")
    assert str(exc.value) == f"{bundle} has no selftest.npz; rebuild it with packager build"
    assert exc.value.code == 2


def test_a_golden_set_with_zero_raw_files_is_refused(tmp_path: Path) -> None:
    """Raw arrays present but empty: no image file would go through preprocess.py, so the
    self-test refuses (exit 2) rather than accept without testing the preprocessing (it used to
    crash splitting zero files)."""
    bundle = make_bundle(tmp_path / "bundle", [0.25], [0.25], RECORDED)
    rewrite_golden(
        bundle,
        raw_bytes=np.zeros(0, np.uint8),
        raw_ends=np.zeros(0, np.int64),
        raw_names=np.array([], dtype=str),
        raw_kinds=np.array([], dtype=str),
        raw_probs=np.zeros((0, 2), np.float32),
    )
    with pytest.raises(shipped.Refused) as exc:
        shipped.self_test(bundle, tmp_path / "record.json")
    assert str(exc.value) == "selftest.npz holds no raw image files; rebuild the bundle"
    assert exc.value.code == 2
    assert shipped.raw_files(np.zeros(0, np.uint8), np.zeros(0, np.int64)) == []
    data, ends = np.frombuffer(b"abcdef", np.uint8), np.array([2, 2, 6])
    assert shipped.raw_files(data, ends) == [b"ab", b"", b"cdef"]
