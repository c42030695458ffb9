"""Hostile and broken inputs through the real CLI: every one ends in exit 2 (or 1 for a gate) with
one line on stderr, no traceback, and nothing published under the output directory."""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import (
    DEFAULT_TOML,
    Result,
    assert_user_error,
    run_unprivileged,
    unprivileged_dir,
)

BOOKKEEPING = {".staging", ".cache", ".lock"}
BUILD = ("build", "--target", "cpu-onnxruntime", "--no-bench")


def assert_refused(r: Result, tmp: Path, *words: str) -> None:
    """assert_user_error, with the words looked for outside the temporary path (whose name
    repeats the test's, so it must not satisfy the check)."""
    assert_user_error(r)
    line = r.stderr.strip().lower().replace(str(tmp).lower(), "<tmp>")
    for w in words:
        assert w.lower() in line, (w, r.stderr)


def assert_unpublished(root: Path, allow_failed: bool = False) -> None:
    """dist/ holds no bundle, no half-written file and no staging leftover."""
    out = root / "dist"
    if not out.exists():
        return
    allowed = BOOKKEEPING | ({".failed"} if allow_failed else set())
    assert {p.name for p in out.iterdir()} <= allowed, sorted(out.iterdir())
    staging = out / ".staging"
    assert not staging.exists() or not any(staging.iterdir()), list(staging.rglob("*"))
    cache = out / ".cache"
    assert not cache.exists() or not list(cache.glob("*part*")), list(cache.iterdir())


# ---------------------------------------------------------------------------------------------
# Models built with onnx.helper; most are rejected at intake, before any conversion.


def vi(name: str, elem: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def save(
    path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto] | None = None,
) -> Path:
    g = helper.make_graph(nodes, "hostile", inputs, outputs, inits or [])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(m, str(path))
    return path


def pooled_head(x: str = "x", classes: int = 2) -> tuple[list[onnx.NodeProto], list]:
    """x (N,3,H,W) -> global average pool -> Gemm -> (N, classes): a valid small head."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("GlobalAveragePool", [x], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "W", "B"], ["out"]),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(size=(3, classes)).astype(np.float32), "W"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "B"),
    ]
    return nodes, inits


IMG = vi("x", TensorProto.FLOAT, ["N", 3, 32, 32])
OUT2 = vi("out", TensorProto.FLOAT, ["N", 2])


def m_truncated(d: Path, tiny: Path) -> Path:
    data = tiny.read_bytes()
    (d / "m.onnx").write_bytes(data[: len(data) // 2])
    return d / "m.onnx"


def m_empty(d: Path, tiny: Path) -> Path:
    (d / "m.onnx").write_bytes(b"")
    return d / "m.onnx"


def m_text(d: Path, tiny: Path) -> Path:
    (d / "m.onnx").write_text("this is not a model\n")
    return d / "m.onnx"


def m_png(d: Path, tiny: Path) -> Path:
    (d / "m.onnx").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return d / "m.onnx"


def m_random(d: Path, tiny: Path) -> Path:
    (d / "m.onnx").write_bytes(np.random.default_rng(3).bytes(4096))
    return d / "m.onnx"


def m_directory(d: Path, tiny: Path) -> Path:
    (d / "m.onnx").mkdir()
    return d / "m.onnx"


def m_two_inputs(d: Path, tiny: Path) -> Path:
    nodes, inits = pooled_head("s")
    add = helper.make_node("Add", ["x", "y"], ["s"])
    y = vi("y", TensorProto.FLOAT, ["N", 3, 32, 32])
    return save(d / "m.onnx", [add, *nodes], [IMG, y], [OUT2], inits)


def m_rank2(d: Path, tiny: Path) -> Path:
    w = numpy_helper.from_array(np.ones((3072, 2), np.float32), "W")
    gemm = helper.make_node("Gemm", ["x", "W"], ["out"])
    return save(d / "m.onnx", [gemm], [vi("x", TensorProto.FLOAT, ["N", 3072])], [OUT2], [w])


def m_uint8(d: Path, tiny: Path) -> Path:
    nodes, inits = pooled_head("xf")
    cast = helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT)
    x = vi("x", TensorProto.UINT8, ["N", 3, 32, 32])
    return save(d / "m.onnx", [cast, *nodes], [x], [OUT2], inits)


def m_absurd_dim(d: Path, tiny: Path) -> Path:
    nodes, inits = pooled_head()
    x = vi("x", TensorProto.FLOAT, [1, 3, 1_000_000, 1_000_000])
    return save(d / "m.onnx", nodes, [x], [vi("out", TensorProto.FLOAT, [1, 2])], inits)


def m_huge_input(d: Path, tiny: Path) -> Path:
    nodes, inits = pooled_head()
    x = vi("x", TensorProto.FLOAT, [64, 3, 16000, 16000])
    return save(d / "m.onnx", nodes, [x], [vi("out", TensorProto.FLOAT, [64, 2])], inits)


def m_spatial_output(d: Path, tiny: Path) -> Path:
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "W")
    conv = helper.make_node("Conv", ["x", "W"], ["out"])
    out = vi("out", TensorProto.FLOAT, ["N", 2, 32, 32])
    return save(d / "m.onnx", [conv], [IMG], [out], [w])


def m_one_score(d: Path, tiny: Path) -> Path:
    nodes, inits = pooled_head(classes=1)
    return save(d / "m.onnx", nodes, [IMG], [vi("out", TensorProto.FLOAT, ["N", 1])], inits)


def m_argmax_output(d: Path, tiny: Path) -> Path:
    nodes, inits = pooled_head()
    nodes[-1].output[0] = "scores"
    nodes.append(helper.make_node("ArgMax", ["scores"], ["out"], axis=1, keepdims=0))
    return save(d / "m.onnx", nodes, [IMG], [vi("out", TensorProto.INT64, ["N"])], inits)


def m_two_outputs(d: Path, tiny: Path) -> Path:
    nodes, inits = pooled_head()
    nodes.append(helper.make_node("Identity", ["f"], ["features"]))
    feats = vi("features", TensorProto.FLOAT, ["N", 3])
    return save(d / "m.onnx", nodes, [IMG], [OUT2, feats], inits)


def m_three_classes(d: Path, tiny: Path) -> Path:
    nodes, inits = pooled_head(classes=3)
    return save(d / "m.onnx", nodes, [IMG], [vi("out", TensorProto.FLOAT, ["N", 3])], inits)


def m_checker_fails(d: Path, tiny: Path) -> Path:
    nodes, inits = pooled_head()
    nodes[0].op_type = "NoSuchOperator"
    return save(d / "m.onnx", nodes, [IMG], [OUT2], inits)


def m_runtime_rejects(d: Path, tiny: Path) -> Path:
    """Passes the ONNX checker, but the Gemm weight does not fit: ONNX Runtime refuses it."""
    nodes, inits = pooled_head()
    inits[0] = numpy_helper.from_array(np.ones((5, 2), np.float32), "W")
    return save(d / "m.onnx", nodes, [IMG], [OUT2], inits)


def m_no_graph(d: Path, tiny: Path) -> Path:
    (d / "m.onnx").write_bytes(onnx.ModelProto(ir_version=8).SerializeToString())
    return d / "m.onnx"


def _external(d: Path, location: str) -> Path:
    """The pooled head with W stored as external data at `location`."""
    nodes, inits = pooled_head()
    w = inits[0]
    raw = w.raw_data
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    (d / "outside.bin").write_bytes(raw)  # real data: only the path check stops the read
    (d / "m").mkdir()
    return save(d / "m" / "model.onnx", nodes, [IMG], [OUT2], inits)


def m_ext_dotdot(d: Path, tiny: Path) -> Path:
    return _external(d, "../outside.bin")


def m_ext_absolute(d: Path, tiny: Path) -> Path:
    return _external(d, str(d / "outside.bin"))


def m_ext_symlink(d: Path, tiny: Path) -> Path:
    path = _external(d, "weights.bin")
    (d / "m" / "weights.bin").symlink_to(d / "outside.bin")
    return path


def m_ext_missing(d: Path, tiny: Path) -> Path:
    return _external(d, "weights.bin")


def m_ext_nul(d: Path, tiny: Path) -> Path:
    return _external(d, "weights\x00.bin")


def m_ext_short(d: Path, tiny: Path) -> Path:
    path = _external(d, "weights.bin")
    (d / "m" / "weights.bin").write_bytes(b"\0" * 8)  # W needs 24 bytes
    return path


MODELS: dict[str, tuple[Callable[[Path, Path], Path], tuple[str, ...]]] = {
    "truncated": (m_truncated, ("onnx",)),
    "empty_file": (m_empty, ("is empty",)),
    "text_file": (m_text, ("onnx",)),
    "png_bytes": (m_png, ("onnx",)),
    "random_bytes": (m_random, ("onnx",)),
    "directory": (m_directory, ("is a directory",)),
    "no_graph": (m_no_graph, ("no graph",)),
    "unknown_operator": (m_checker_fails, ("checker",)),
    "runtime_rejects": (m_runtime_rejects, ("reference runtime", "Gemm")),
    "two_inputs": (m_two_inputs, ("2 inputs",)),
    "input_rank_2": (m_rank2, ("rank 2",)),
    "input_uint8": (m_uint8, ("uint8",)),
    "absurd_dimension": (m_absurd_dim, ("absurd",)),
    "huge_input": (m_huge_input, ("too large",)),
    "spatial_output": (m_spatial_output, ("class scores",)),
    "one_score_output": (m_one_score, ("one score per class",)),
    "argmax_int_output": (m_argmax_output, ("int64",)),
    "two_outputs": (m_two_outputs, ("2 outputs",)),
    "classes_vs_labels": (m_three_classes, ("3 outputs", "labels")),
    "external_dotdot": (m_ext_dotdot, ("outside the model's folder",)),
    "external_absolute": (m_ext_absolute, ("outside the model's folder",)),
    "external_symlink_out": (m_ext_symlink, ("outside the model's folder",)),
    "external_missing": (m_ext_missing, ("missing",)),
    "external_nul_byte": (m_ext_nul, ("external data",)),
    "external_too_short": (m_ext_short, ("external data",)),
}


@pytest.mark.parametrize("case", list(MODELS))
def test_bad_model(case: str, project, cli, tiny_model: Path, tmp_path: Path) -> None:
    builder, words = MODELS[case]
    models = tmp_path / "models"
    models.mkdir()
    model = builder(models, tiny_model)
    root = project()
    r = cli(*BUILD, "--model", model, cwd=root)
    assert_refused(r, tmp_path, *words)
    assert_unpublished(root)


@pytest.mark.parametrize("case", ["truncated", "two_inputs", "external_dotdot", "spatial_output"])
def test_bad_model_inspect(case: str, cli, tiny_model: Path, tmp_path: Path) -> None:
    builder, words = MODELS[case]
    model = builder(tmp_path, tiny_model)
    r = cli("inspect", model, "--json", cwd=tmp_path)
    assert_refused(r, tmp_path, *words)
    assert r.stdout == ""


def nan_model(tiny: Path, dest: Path, op: str) -> Path:
    """The tiny classifier with its scores sent through x/0 or log(-|x|-1): NaN and Inf."""
    m = onnx.load(str(tiny))
    last = m.graph.node[-1]  # Identity(logits) -> output
    src = last.input[0]
    if op == "div_by_zero":
        m.graph.initializer.append(numpy_helper.from_array(np.zeros(2, np.float32), "zero"))
        new = [helper.make_node("Div", [src, "zero"], ["output"])]
    else:
        m.graph.initializer.append(numpy_helper.from_array(np.ones(1, np.float32), "one"))
        new = [
            helper.make_node("Abs", [src], ["a"]),
            helper.make_node("Neg", ["a"], ["n"]),
            helper.make_node("Sub", ["n", "one"], ["s"]),
            helper.make_node("Log", ["s"], ["output"]),
        ]
    m.graph.node.remove(last)
    m.graph.node.extend(new)
    onnx.checker.check_model(m)
    onnx.save(m, str(dest))
    return dest


@pytest.mark.parametrize("op", ["div_by_zero", "log_of_negative"])
def test_nan_inf_scores_fail_the_gate(op: str, project, cli, tiny_model: Path) -> None:
    root = project()
    model = nan_model(tiny_model, root / f"{op}.onnx", op)
    r = cli(*BUILD, "--model", model, cwd=root)
    assert r.code == 1, (r.code, r.stderr)
    assert r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
    assert "Traceback" not in r.stderr and "gate failed" in r.stderr
    assert_unpublished(root, allow_failed=True)
    report = (root / "dist/.failed/tiny-1.0.0/cpu-onnxruntime/report.json").read_text()
    assert '"name": "finite_outputs"' in report and '"status": "failed"' in report


# ---------------------------------------------------------------------------------------------
# Datasets


def npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def real_split(data: Path, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    with np.load(data) as z:
        return z["test_images"][:n], z["test_labels"][:n]


def d_missing_keys(d: Path, data: Path) -> Path:
    imgs, _ = real_split(data)
    return npz(d / "d.npz", images=imgs)


def d_length_mismatch(d: Path, data: Path) -> Path:
    imgs, labels = real_split(data)
    return npz(d / "d.npz", test_images=imgs, test_labels=labels[:-3])


def d_empty_split(d: Path, data: Path) -> Path:
    return npz(
        d / "d.npz",
        test_images=np.zeros((0, 28, 28), np.uint8),
        test_labels=np.zeros((0, 1), np.uint8),
    )


def d_label_outside(d: Path, data: Path) -> Path:
    imgs, labels = real_split(data)
    labels = labels.copy()
    labels[5] = 7
    return npz(d / "d.npz", test_images=imgs, test_labels=labels)


def d_label_negative(d: Path, data: Path) -> Path:
    imgs, labels = real_split(data)
    labels = labels.astype(np.int64)
    labels[0] = -1
    return npz(d / "d.npz", test_images=imgs, test_labels=labels)


def d_float_images(d: Path, data: Path) -> Path:
    imgs, labels = real_split(data)
    return npz(d / "d.npz", test_images=imgs / 255.0, test_labels=labels)


def d_float_labels(d: Path, data: Path) -> Path:
    imgs, labels = real_split(data)
    return npz(d / "d.npz", test_images=imgs, test_labels=labels.astype(np.float32))


def d_five_channels(d: Path, data: Path) -> Path:
    imgs, labels = real_split(data)
    return npz(d / "d.npz", test_images=np.stack([imgs] * 5, -1), test_labels=labels)


def d_zero_size_images(d: Path, data: Path) -> Path:
    _, labels = real_split(data)
    return npz(d / "d.npz", test_images=np.zeros((40, 0, 0), np.uint8), test_labels=labels)


def d_multilabel(d: Path, data: Path) -> Path:
    imgs, labels = real_split(data)
    return npz(d / "d.npz", test_images=imgs, test_labels=np.concatenate([labels] * 2, 1))


def d_pickled(d: Path, data: Path) -> Path:
    _, labels = real_split(data)
    objs = np.empty(40, object)
    objs[:] = [{"x": i} for i in range(40)]
    return npz(d / "d.npz", test_images=objs, test_labels=labels)


def d_not_npz(d: Path, data: Path) -> Path:
    (d / "d.npz").write_text("label,path\n0,a.png\n")
    return d / "d.npz"


def d_npy_not_npz(d: Path, data: Path) -> Path:
    imgs, _ = real_split(data)
    np.save(d / "d.npy", imgs)
    return d / "d.npy"


def d_zip_bomb(d: Path, data: Path) -> Path:
    """A small file whose zip directory declares a petabyte of images."""
    imgs, labels = real_split(data)
    with zipfile.ZipFile(d / "d.npz", "w") as z:
        for key, arr in (("test_images", imgs), ("test_labels", labels)):
            buf = io.BytesIO()
            np.save(buf, arr)
            z.writestr(f"{key}.npy", buf.getvalue())
        z.filelist[0].file_size = 1 << 50  # written to the central directory (zip64)
    return d / "d.npz"


def d_truncated_npz(d: Path, data: Path) -> Path:
    imgs, labels = real_split(data)
    path = npz(d / "d.npz", test_images=imgs, test_labels=labels)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def d_missing_path(d: Path, data: Path) -> Path:
    return d / "nowhere.npz"


def png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(arr).save(path)


def folder(d: Path, data: Path, n: int = 4) -> Path:
    imgs, labels = real_split(data, 2 * n)
    root = d / "images"
    for name in ("normal", "pneumonia"):
        (root / name).mkdir(parents=True)
    for i, (img, lbl) in enumerate(zip(imgs, labels.reshape(-1), strict=True)):
        png(root / ("pneumonia" if lbl else "normal") / f"{i}.png", img)
    return root


def f_unreadable(d: Path, data: Path) -> Path:
    root = folder(d, data)
    (root / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


def f_truncated_png(d: Path, data: Path) -> Path:
    root = folder(d, data)
    good = next((root / "normal").iterdir()).read_bytes()
    (root / "normal" / "cut.png").write_bytes(good[: len(good) // 2])
    return root


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def f_decompression_bomb(d: Path, data: Path) -> Path:
    root = folder(d, data)
    (root / "pneumonia" / "bomb.png").write_bytes(_png_header_only(60000, 60000))
    return root


def f_unknown_class(d: Path, data: Path) -> Path:
    root = folder(d, data)
    (root / "covid").mkdir()
    return root


def f_no_images(d: Path, data: Path) -> Path:
    root = d / "images"
    for name in ("normal", "pneumonia"):
        (root / name).mkdir(parents=True)
        (root / name / "notes.txt").write_text("no images here")
    return root


DATA: dict[str, tuple[Callable[[Path, Path], Path], tuple[str, ...]]] = {
    "npz_missing_keys": (d_missing_keys, ("test_images",)),
    "npz_length_mismatch": (d_length_mismatch, ("40 images but 37 labels",)),
    "npz_empty_split": (d_empty_split, ("empty",)),
    "npz_label_outside_classes": (d_label_outside, ("label 7", "outside")),
    "npz_label_negative": (d_label_negative, ("label -1",)),
    "npz_float_images": (d_float_images, ("uint8",)),
    "npz_float_labels": (d_float_labels, ("integer",)),
    "npz_five_channels": (d_five_channels, ("5 channels",)),
    "npz_zero_size_images": (d_zero_size_images, ("0x0",)),
    "npz_multilabel": (d_multilabel, ("multi-label",)),
    "npz_pickled_objects": (d_pickled, ("cannot read",)),
    "npz_not_npz": (d_not_npz, ("not an .npz",)),
    "npz_is_npy": (d_npy_not_npz, ("not an .npz",)),
    "npz_zip_bomb": (d_zip_bomb, ("GiB in memory",)),
    "npz_truncated": (d_truncated_npz, ("not an .npz",)),
    "npz_missing_path": (d_missing_path, ("does not exist",)),
    "folder_unreadable_file": (f_unreadable, ("broken.png", "cannot read image")),
    "folder_truncated_png": (f_truncated_png, ("cut.png",)),
    "folder_decompression_bomb": (f_decompression_bomb, ("bomb.png",)),
    "folder_unknown_class": (f_unknown_class, ("covid",)),
    "folder_no_images": (f_no_images, ("no images",)),
}


@pytest.mark.parametrize("case", list(DATA))
def test_bad_data(case: str, project, cli, data_path: Path, tmp_path: Path) -> None:
    builder, words = DATA[case]
    where = tmp_path / "data"
    where.mkdir()
    root = project()
    r = cli(*BUILD, "--data", builder(where, data_path), cwd=root)
    assert_refused(r, tmp_path, *words)
    assert_unpublished(root)


def unprivileged_project(tiny_model: Path, data: Path) -> Path:
    """A project folder nobody can use: run_unprivileged hands it over before the build."""
    root = unprivileged_dir()
    shutil.copy(tiny_model, root / "tiny.onnx")
    (root / "packager.toml").write_text(DEFAULT_TOML.format(model=root / "tiny.onnx", data=data))
    return root


def test_folder_permission_denied(tiny_model: Path, data_path: Path) -> None:
    """An unreadable image, read by an unprivileged user (root reads whatever the mode)."""
    root = unprivileged_project(tiny_model, data_path)
    try:
        images = folder(root, data_path)
        locked = sorted((images / "normal").glob("*.png"))[0]
        r = run_unprivileged([*BUILD, "--data", str(images)], root, lock=lambda: locked.chmod(0))
        assert_user_error(r, locked.name)
        assert_unpublished(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_unknown_split(project, cli) -> None:
    root = project()
    assert_user_error(cli(*BUILD, "--split", "tset", cwd=root), "choose --split", "test")


# ---------------------------------------------------------------------------------------------
# Config: typos get a close-match hint, wrong types name the key and the expected type.

CONFIGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "section_typo": ("[modle]\nname = 'x'\n", ("[modle]", "did you mean 'model'")),
    "key_typo": ("[labels]\nthreshhold = 0.3\n", ("threshhold", "did you mean 'threshold'")),
    "string_for_float": ("[gates]\nmin_sensitivity = '0.98'\n", ("gates.min_sensitivity",)),
    "bool_for_int": ("[preprocess]\nsize = true\n", ("preprocess.size", "int")),
    "string_for_list": ("[preprocess]\nmean = '0.5'\n", ("preprocess.mean", "list")),
    "percent_not_fraction": ("[gates]\nmin_sensitivity = 98\n", ("fraction",)),
    "nan_threshold": ("[gates]\nmax_sensitivity_drop = nan\n", ("max_sensitivity_drop",)),
    "inf_seconds": ("[bench]\nseconds = inf\n", ("bench.seconds", "finite")),
    "bad_literal": ("[preprocess]\nlayout = 'NHCW'\n", ("NHCW", "NCHW")),
    "section_not_table": ("gates = 3\n", ("[gates] must be a table",)),
    "section_empty_string": ('gates = ""\n', ("[gates] must be a table",)),
    "target_typo": ("[targets.cpu-onnxrt]\nthreads = 1\n", ("cpu-onnxrt", "cpu-onnxruntime")),
    "target_option_typo": (
        "[targets.cpu-onnxruntime]\noptimisation = 'all'\n",
        ("optimisation", "did you mean 'optimization'"),
    ),
    "target_option_type": ("[targets.cpu-onnxruntime]\nthreads = '4'\n", ("threads",)),
    "positive_not_a_label": (
        "[labels]\nnames = ['a', 'b']\npositive = 'c'\n",
        ("positive",),
    ),
    "name_with_slash": ("[model]\nname = '../../etc'\n", ("model.name",)),
    "invalid_toml": ("[gates]\nmin_sensitivity = = 0.9\n", ("not valid TOML",)),
}


def _toml(extra: str, model: Path, data: Path) -> str:
    """DEFAULT_TOML, with any table that `extra` redefines taken from `extra` instead."""
    base = DEFAULT_TOML.format(model=model, data=data)
    redefined = {line.strip() for line in extra.splitlines() if line.startswith("[")}
    kept, skip = [], False
    for line in base.splitlines():
        if line.startswith("["):
            skip = line.strip() in redefined
        if not skip:
            kept.append(line)
    if not extra.startswith("["):  # top-level keys go before the first table
        return extra + "\n".join(kept) + "\n"
    return "\n".join(kept) + "\n" + extra


@pytest.mark.parametrize("case", list(CONFIGS))
def test_bad_config(case: str, cli, tiny_model: Path, data_path: Path, tmp_path: Path) -> None:
    extra, words = CONFIGS[case]
    (tmp_path / "packager.toml").write_text(_toml(extra, tiny_model, data_path))
    assert_refused(cli(*BUILD, cwd=tmp_path), tmp_path, *words)
    assert_unpublished(tmp_path)


def test_missing_config_file(cli, tmp_path: Path) -> None:
    assert_user_error(cli(*BUILD, "--config", "nope.toml", cwd=tmp_path), "nope.toml")


def test_preprocess_size_differs_from_model(project, cli) -> None:
    root = project("[preprocess]\nsize = 48\n")
    assert_user_error(cli(*BUILD, cwd=root), "32x32", "size = 48")
    assert_unpublished(root)


def test_preprocess_channels_differ_from_model(project, cli) -> None:
    root = project("[preprocess]\nchannels = 1\n")
    assert_user_error(cli(*BUILD, cwd=root), "3 channels", "channels = 1")


# ---------------------------------------------------------------------------------------------
# Output directory: unwritable, read-only, full.


def test_output_under_a_file(project, cli) -> None:
    root = project()
    (root / "blocker").write_text("a file, not a folder")
    r = cli(*BUILD, "--out", root / "blocker" / "dist", cwd=root)
    assert_user_error(r, "blocker", "--out")
    assert (root / "blocker").read_text() == "a file, not a folder"


def test_output_without_permission(tiny_model: Path, data_path: Path) -> None:
    """An output folder the (unprivileged) user may not write to."""
    root = unprivileged_project(tiny_model, data_path)
    out = root / "ro"
    out.mkdir()
    try:
        r = run_unprivileged([*BUILD, "--out", str(out)], root, lock=lambda: out.chmod(0o555))
        assert_user_error(r, "--out")
        assert list(out.iterdir()) == []
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _namespace_ok() -> str:
    """'' when `unshare -rm` can mount a tmpfs here (user namespaces), else why not."""
    if not shutil.which("unshare"):
        return "unshare is not installed"
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=16k tmpfs /mnt"],
        capture_output=True,
        text=True,
    )
    return "" if probe.returncode == 0 else f"cannot mount a tmpfs: {probe.stderr.strip()}"


NAMESPACE = _namespace_ok() if sys.platform == "linux" else "needs Linux mount namespaces"


def in_namespace(mount: str, target: Path, root: Path, args: list[str]) -> tuple[Result, list[str]]:
    """Run the CLI with `target` replaced by a fresh mount (a tmpfs or a read-only bind) in a
    private mount namespace; returns its result and what the mount held when it exited."""
    listing = root / "listing.txt"
    script = (
        f'{mount} && "$@"; rc=$?; find "$T" -mindepth 1 | sort > "$L"; '
        'find "$T" -name manifest.json -path "*tiny-*" >> "$L.published"; exit $rc'
    )
    env = {**os.environ, "T": str(target), "L": str(listing)}
    cmd = ["unshare", "-rm", "sh", "-c", script, "sh", sys.executable, "-m", "packager.cli"]
    proc = subprocess.run(
        [*cmd, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    rel = [line.removeprefix(str(target) + "/") for line in listing.read_text().splitlines()]
    return Result(proc.returncode, proc.stdout, proc.stderr), rel


@pytest.mark.skipif(bool(NAMESPACE), reason=NAMESPACE or "ok")
def test_output_read_only_mount(project) -> None:
    root = project()
    out = root / "ro"
    out.mkdir()
    r, held = in_namespace(
        'mount --bind "$T" "$T" && mount -o remount,ro,bind "$T"', out, root, [*BUILD, "--out", out]
    )
    assert_user_error(r, "read-only", "--out")
    assert held == []


@pytest.mark.parametrize("size_kb", [8, 48, 96])
@pytest.mark.skipif(bool(NAMESPACE), reason=NAMESPACE or "ok")
def test_disk_full(size_kb: int, project) -> None:
    """A real ENOSPC: the output directory is a tmpfs too small for the bundle; each size runs
    out at a different write (cache, model copy, reports, tarball)."""
    root = project()
    out = root / "full"
    out.mkdir()
    mount = f'mount -t tmpfs -o size={size_kb}k tmpfs "$T"'
    r, held = in_namespace(mount, out, root, [*BUILD, "--out", out])
    assert_user_error(r, "no space left", "--out")
    leftovers = [p for p in held if p.split("/")[0] not in BOOKKEEPING]
    assert leftovers == [], held
    assert [p for p in held if p.startswith(".staging/")] == [], held
    assert not (root / "listing.txt.published").read_text().strip()


def test_file_size_limit(project, tiny_model: Path, data_path: Path) -> None:
    """An injected write error with no mount needed: RLIMIT_FSIZE makes every write past 1 MiB
    fail with EFBIG. Data and worker files stay under it; the 4 MiB model copy into the bundle
    does not."""
    root = project()
    m = onnx.load(str(tiny_model))
    pad = np.zeros(1 << 20, np.float32)  # unused by the graph: only makes the file large
    m.graph.initializer.append(numpy_helper.from_array(pad, "pad"))
    onnx.save(m, str(root / "big.onnx"))
    imgs, labels = real_split(data_path)
    small = npz(root / "small.npz", test_images=imgs, test_labels=labels)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    proc = subprocess.run(
        [sys.executable, "-m", "packager.cli", *BUILD, "--model", "big.onnx", "--data", small],
        cwd=root,
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=300,
    )
    assert_user_error(Result(proc.returncode, proc.stdout, proc.stderr), "file too large")
    assert_unpublished(root)


# ---------------------------------------------------------------------------------------------
# Injection: user strings reach README.md, report.md, report.html, predict.py and config.pbtxt.

# Closes predict.py's docstring if pasted raw: `python predict.py` would then run system().
EVIL_NAME = 'evil"""+__import__("os").system("touch PWNED")+"""<img src=x onerror=alert(1)>'
EVIL_DESCRIPTION = (
    'first line\n# Injected heading\n<script>alert("x")</script> | a | b |\n'
    "[click](javascript:alert(1)) `code` ' \" &amp;"
)
EVIL_LABELS = ["<b>normal</b>", "pneu\"mo'nia\n<i>x</i>"]


def evil_project(root: Path, tiny_model: Path, data_path: Path) -> Path:
    labels = ", ".join(toml_string(n) for n in EVIL_LABELS)
    extra = (
        f"[model]\npath = {toml_string(str(tiny_model))}\nname = {toml_string(EVIL_NAME)}\n"
        f'version = "1.0.0"\ndescription = {toml_string(EVIL_DESCRIPTION)}\n'
        f"[labels]\nthreshold = 0.2\nnames = [{labels}]\npositive = {toml_string(EVIL_LABELS[1])}\n"
    )
    (root / "packager.toml").write_text(_toml(extra, tiny_model, data_path))
    return root / "dist" / f"{EVIL_NAME}-1.0.0"


def outside_code(markdown: str) -> str:
    """The Markdown a renderer interprets: fenced code blocks removed (their HTML is inert)."""
    parts = markdown.split("\n```")
    assert len(parts) % 2 == 1, "a code fence was left open"
    return "".join(parts[::2])


def check_escaped(bundle: Path) -> None:
    """No user string became markup, code or a new field anywhere in the bundle."""
    for doc in [*bundle.rglob("*.md"), *bundle.rglob("*.html")]:
        text = doc.read_text()
        live = outside_code(text) if doc.suffix == ".md" else text
        for raw in ("<img src", "<script", "<b>normal", "<i>x"):
            assert raw not in live, (doc.name, raw)
        if doc.suffix == ".md":
            assert "](javascript" not in live and "\n# Injected" not in live, doc.name
    for py in bundle.rglob("*.py"):
        compile(py.read_text(), str(py), "exec")
    if (bundle / "predict.py").exists():  # the name sits in its docstring: must not run
        run = subprocess.run(
            [sys.executable, "predict.py"], cwd=bundle, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 2 and "Classify chest images" in run.stderr, run.stderr
        assert not (bundle / "PWNED").exists()
    runtime = json.loads((bundle / "runtime.json").read_text())
    assert runtime["labels"] == EVIL_LABELS and runtime["positive"] == EVIL_LABELS[1]
    for cfg in bundle.rglob("config.pbtxt"):
        from packager.convert.triton import parse_config

        assert parse_config(cfg).name == cfg.parent.name == EVIL_NAME


@pytest.mark.slow  # every target this host can build (about 30 s)
def test_injection_is_escaped_in_every_target(
    cli, tiny_model: Path, data_path: Path, tmp_path: Path
) -> None:
    """One `build --all` (its cpu-onnxruntime bundle is the single-target build's, byte for
    byte): the HTML report shows the name as text, and no bundle has it as markup or code."""
    root = evil_project(tmp_path, tiny_model, data_path)
    r = cli("build", "--all", "--no-bench", cwd=tmp_path)
    assert r.code == 0, r.stderr
    assert (
        "&lt;img src=x onerror=alert(1)&gt;" in (root / "cpu-onnxruntime/report.html").read_text()
    )
    built = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert "cpu-onnxruntime" in [p.name for p in built] and len(built) >= 2, built
    for bundle in built:
        check_escaped(bundle)


def test_triton_config_escapes_the_same_strings() -> None:
    """config.pbtxt (packager/convert/triton.py) with the strings above, read back by Triton's own
    ModelConfig protobuf: each is one string, unchanged, and adds no field."""
    from packager.convert.triton import (
        Accelerator,
        Tensor,
        TritonModel,
        parse_config,
        render_config,
    )

    name = EVIL_NAME + '"\n}\ninstance_group [{ kind: KIND_CPU }]\n#'
    m = TritonModel(
        name=name.replace("\n", " "),  # a name is a folder name: no newline (checked upstream)
        inputs=[Tensor(EVIL_LABELS[0], "float32", [3, 32, 32])],
        outputs=[Tensor(EVIL_LABELS[1], "float32", [2])],
        platform="onnxruntime_onnx",
        max_batch_size=8,
        instance_kind="KIND_GPU",
        cpu_accelerators=[Accelerator("openvino", {EVIL_DESCRIPTION: EVIL_DESCRIPTION})],
    )
    cfg = parse_config(render_config(m))
    assert cfg.name == m.name
    assert [i.name for i in cfg.input] == [EVIL_LABELS[0]]
    assert [o.name for o in cfg.output] == [EVIL_LABELS[1]]
    assert len(cfg.instance_group) == 1 and cfg.instance_group[0].kind == 1  # KIND_GPU
    acc = cfg.optimization.execution_accelerators.cpu_execution_accelerator[0]
    assert dict(acc.parameters) == {EVIL_DESCRIPTION: EVIL_DESCRIPTION}


def toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)
