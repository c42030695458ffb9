"""Property-based tests (hypothesis, bounded): config parsing and data loading return a valid
object or raise UserError, whatever they are given; what they return holds its invariants."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import shutil
import struct
import tempfile
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from packager.core.config import SECTIONS, Config, load_config, parse_config
from packager.core.data import load_dataset
from packager.core.errors import UserError
from packager.shipped.preprocess import Preprocess

# PACKAGER_PROPERTY_EXAMPLES=5000 for a long local run; the suite keeps them bounded.
LONG = int(os.environ.get("PACKAGER_PROPERTY_EXAMPLES", "0"))


def bounded(examples: int) -> settings:
    return settings(
        max_examples=LONG or examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )


scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-3, max_value=5000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1.5, max_value=1.5),
    st.text(max_size=12),
    st.sampled_from(["NCHW", "NHWC", "auto", "logits", "normal", "pneumonia", "fp16", "../x"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in SECTIONS.items()}


@st.composite
def config_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly real sections and keys, sometimes typos, with values of any TOML type."""
    out: dict[str, Any] = {}
    for _ in range(draw(st.integers(0, 5))):
        section = draw(st.sampled_from([*FIELDS, "targets"]) | st.text(min_size=1, max_size=8))
        if section == "targets":
            out[section] = draw(
                st.dictionaries(
                    st.sampled_from(["cpu-onnxruntime", "nope"]) | st.text(max_size=6),
                    st.dictionaries(st.text(max_size=8), values, max_size=3) | values,
                    max_size=2,
                )
            )
            continue
        keys = FIELDS.get(section, [])
        table = {}
        for _ in range(draw(st.integers(0, 4))):
            key = draw(
                st.sampled_from(keys) if keys and draw(st.booleans()) else st.text(max_size=8)
            )
            table[key] = draw(values)
        out[section] = table if draw(st.integers(0, 9)) else draw(values)
    return out


def _floats(obj: Any) -> list[float]:
    if dataclasses.is_dataclass(obj):
        return [x for f in dataclasses.fields(obj) for x in _floats(getattr(obj, f.name))]
    if isinstance(obj, list):
        return [x for v in obj for x in _floats(v)]
    return [obj] if isinstance(obj, float) else []


def check_invariants(cfg: Config) -> None:
    lab = cfg.labels
    assert len(lab.names) >= 2 and len(set(lab.names)) == len(lab.names)
    assert lab.positive in lab.names and 0 < lab.threshold < 1
    assert 0 <= cfg.gates.min_sensitivity <= 1 and 0 <= cfg.gates.max_sensitivity_drop <= 1
    p = cfg.preprocess
    assert p.size is None or 1 <= p.size <= 4096
    assert p.channels in (None, 1, 3) and p.layout in (None, "NCHW", "NHWC")
    assert 0 not in p.std and len(p.mean) in (1, 3) and len(p.std) in (1, 3)
    assert cfg.bench.batch_sizes and all(1 <= b <= 4096 for b in cfg.bench.batch_sizes)
    assert cfg.bench.seconds > 0 and cfg.bench.timeout_s > 0
    for name in (cfg.model.name, cfg.model.version):
        assert name and "/" not in name and "\\" not in name and name not in (".", "..")
        assert all(ord(c) >= 32 and ord(c) != 127 for c in name)
    assert all(math.isfinite(x) for x in _floats(cfg))
    assert isinstance(cfg.targets, dict) and all(isinstance(v, dict) for v in cfg.targets.values())


names = st.text(
    st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-_."), min_size=1, max_size=20
).filter(lambda t: t not in (".", ".."))
unit = st.floats(0.0, 1.0)
channel_values = st.lists(st.floats(-2, 2), min_size=1, max_size=1) | st.lists(
    st.floats(-2, 2), min_size=3, max_size=3
)
positive_std = st.floats(0.01, 5.0)


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid config by construction: some sections, some keys each, valid values only."""
    labels = draw(st.lists(names, min_size=2, max_size=4, unique=True))
    sections: dict[str, dict[str, Any]] = {
        "model": {"name": draw(names), "version": draw(names), "description": draw(st.text())},
        "data": {
            "split": draw(st.sampled_from(["test", "val"])),
            "calibration_size": draw(st.integers(1, 5000)),
            "seed": draw(st.integers(0, 2**31)),
            "shareable": draw(st.booleans()),
        },
        "preprocess": {
            "size": draw(st.integers(1, 4096)),
            "channels": draw(st.sampled_from([1, 3])),
            "layout": draw(st.sampled_from(["NCHW", "NHWC"])),
            "scale": draw(st.floats(1e-6, 10.0)),
            "mean": draw(channel_values),
            "std": draw(st.lists(positive_std, min_size=1, max_size=1) | st.lists(
                positive_std, min_size=3, max_size=3)),
            "resize": draw(st.sampled_from(["bilinear", "nearest"])),
        },
        "labels": {
            "names": labels,
            "positive": draw(st.sampled_from(labels)),
            "threshold": draw(st.floats(0.001, 0.999)),
            "output": draw(st.sampled_from(["auto", "logits", "probabilities"])),
        },
        "gates": {"min_sensitivity": draw(unit), "max_sensitivity_drop": draw(unit)},
        "bench": {
            "batch_sizes": draw(st.lists(st.integers(1, 4096), min_size=1, max_size=5)),
            "warmup": draw(st.integers(0, 50)),
            "seconds": draw(st.floats(0.01, 60.0)),
            "min_iterations": draw(st.integers(1, 1000)),
        },
    }  # fmt: skip
    out: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from(sorted(sections)), unique=True)):
        keys = draw(st.lists(st.sampled_from(sorted(sections[section])), unique=True))
        if section == "labels" and {"positive", "names"} & set(keys):
            keys = sorted({*keys, "positive", "names"})  # positive is one of the names given
        out[section] = {k: sections[section][k] for k in keys}
    return out


CONFIG_MUTATIONS = ["none", "key_typo", "section_typo", "wrong_type", "out_of_range"]
OUT_OF_RANGE = {
    "size": 0, "channels": 2, "threshold": 1.0, "min_sensitivity": 98.0, "seed": -1,
    "max_sensitivity_drop": -0.1, "calibration_size": 0, "batch_sizes": [0], "seconds": 0.0,
    "std": [0.0], "mean": [0.1, 0.2], "names": ["a"], "layout": "NHCW", "name": "../x",
    "version": "", "resize": "cubic", "output": "softmax", "positive": "nobody",
}  # fmt: skip


def mutate_config(data: dict[str, Any], mutation: str, draw: Any) -> bool:
    """Apply one mutation in place; True when it must make the config invalid."""
    tables = [(s, k) for s, t in data.items() for k in t]
    if mutation == "none" or not tables:
        return False
    section, key = draw(st.sampled_from(tables))
    if mutation == "key_typo":
        data[section][key + "x"] = data[section].pop(key)
    elif mutation == "section_typo":
        data[section + "s"] = data.pop(section)
    elif mutation == "wrong_type":  # a string where a number, list or flag belongs, or back
        value = data[section][key]
        data[section][key] = {"x": 1} if isinstance(value, str) else str(value)
        if isinstance(value, str) and section == "model" and key == "description":
            return True
    elif mutation == "out_of_range":
        if key not in OUT_OF_RANGE:
            return False
        data[section][key] = OUT_OF_RANGE[key]
    return True


def config_case(parse: Any) -> Any:
    """A @given test: parse(dict) -> Config for a valid config plus at most one mutation."""

    @bounded(80)
    @given(valid_configs(), st.sampled_from(CONFIG_MUTATIONS), st.data())
    def run(seen: Counter[str], data: dict[str, Any], mutation: str, drawn: Any) -> None:
        event(f"mutation: {mutation}")
        given_values = json.loads(json.dumps(data))
        invalid = mutate_config(data, mutation, drawn.draw)
        try:
            cfg = parse(data)
        except UserError as exc:
            assert str(exc) and "\n" not in str(exc).strip()
            assert mutation != "none", (str(exc), data)
            event("outcome: refused")
            seen["refused"] += 1
            return
        assert not invalid, (mutation, data)
        check_invariants(cfg)
        if mutation == "none":  # what was given is what the config holds
            for section, table in given_values.items():
                for key, value in table.items():
                    got = getattr(getattr(cfg, section), key)
                    assert (list(got) if isinstance(got, tuple) else got) == value, (section, key)
        event("outcome: loaded")
        seen["loaded"] += 1

    return run


def test_parse_config_is_total() -> None:
    run_counted(config_case(lambda d: parse_config(d, Path("/tmp"))))


@bounded(60)
@given(config_dicts())
def test_parse_config_takes_any_value_of_any_type(data: dict[str, Any]) -> None:
    """Arbitrary sections, keys and TOML values: a config or one UserError line."""
    try:
        cfg = parse_config(data, Path("/tmp"))
    except UserError as exc:
        assert str(exc) and "\n" not in str(exc).strip()
        return
    check_invariants(cfg)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return (
            "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        )
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def to_toml(data: dict[str, Any]) -> str:
    top = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    tables = [
        f"[{json.dumps(k)}]\n"
        + "".join(f"{json.dumps(kk)} = {toml_value(vv)}\n" for kk, vv in v.items())
        for k, v in data.items()
        if isinstance(v, dict)
    ]
    return "\n".join(top) + "\n" + "\n".join(tables)


def _load_toml(data: dict[str, Any]) -> Config:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "packager.toml"
        path.write_text(to_toml(data), encoding="utf-8")
        return load_config(path)


def test_config_file_is_total() -> None:
    """The same through a real packager.toml."""
    run_counted(config_case(_load_toml))


@bounded(60)
@given(st.text(max_size=200))
def test_config_file_takes_any_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "packager.toml"
        path.write_text(text, encoding="utf-8")
        try:
            cfg = load_config(path)
        except UserError as exc:
            assert "\n" not in str(exc).strip() or "TOML" in str(exc)
            return
        check_invariants(cfg)


# ---------------------------------------------------------------------------------------------
# Data loading: valid datasets by construction, then at most one mutation each. Every run
# counts its outcomes and asserts that a minimum share of cases loaded (the invariants below
# are checked on real data, not only on the defaults of refused input).

LABELS = ["normal", "pneumonia"]
PRE = Preprocess(
    size=6, channels=3, layout="NCHW", scale=1 / 255, mean=(0.5,), std=(0.5,), dtype="float32"
)
MIN_LOADED = 0.3  # share of cases per run that must load


def load_or_refuse(path: Path) -> Any:
    """Either a well-formed dataset or one UserError line, never anything else."""
    try:
        ds = load_dataset(path, "test", LABELS)
    except UserError as exc:
        assert "\n" not in str(exc).strip()
        event("outcome: refused")
        return None
    check_dataset(ds)
    event("outcome: loaded")
    return ds


def check_dataset(ds: Any) -> None:
    assert ds.images.dtype == np.uint8 and ds.images.ndim in (3, 4)
    assert len(ds.images) == len(ds.labels) > 0 and ds.labels.dtype == np.int64
    assert ds.labels.min() >= 0 and ds.labels.max() < len(LABELS)
    assert min(ds.images.shape[1:3]) >= 1
    x = PRE(ds.images)  # what every target is fed: must work on anything the loader accepts
    assert x.shape == (len(ds), 3, 6, 6) and np.isfinite(x).all()


def run_counted(test: Any) -> Counter[str]:
    """Run a @given function that returns an outcome; assert the share that loaded."""
    seen: Counter[str] = Counter()
    test(seen)
    total = sum(seen.values())
    assert total >= 20, seen
    assert seen["loaded"] >= MIN_LOADED * total, f"only {seen['loaded']} of {total} loaded: {seen}"
    assert seen["refused"] > 0, seen  # the mutations reach the checks too
    return seen


@st.composite
def npz_datasets(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """A valid MedMNIST-style split: uint8 images (N, H, W[, 1|3]) and in-range labels of any
    integer dtype and byte order, (N,) or (N, 1)."""
    n = draw(st.integers(1, 6))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    channels = draw(st.sampled_from([(), (1,), (3,)]))
    images = draw(hnp.arrays(np.uint8, (n, h, w, *channels)))
    kind = draw(st.sampled_from(["i1", "i2", "i4", "i8", "u1", "u2", "u8"]))
    order = draw(st.sampled_from(["<", ">"])) if kind[1] != "1" else "|"
    labels = draw(hnp.arrays(np.dtype(order + kind), (n,), elements=st.integers(0, 1)))
    if draw(st.booleans()):
        labels = labels.reshape(n, 1)
    event(f"labels byte order {order}")
    return {"test_images": images, "test_labels": labels}


NPZ_MUTATIONS = ["none", "flip_byte", "truncate", "dtype", "shape", "key", "huge_header"]


@bounded(150)
@given(npz_datasets(), st.sampled_from(NPZ_MUTATIONS), st.booleans(), st.data())
def _npz_case(
    seen: Counter[str], arrays: dict[str, np.ndarray], mutation: str, compressed: bool, data: Any
) -> None:
    event(f"mutation: {mutation}")
    arrays = dict(arrays)
    images, labels = arrays["test_images"], arrays["test_labels"]
    key = ""
    if mutation == "dtype":  # one array gets another dtype
        key = data.draw(st.sampled_from(["test_images", "test_labels"]))
        new = data.draw(st.sampled_from([">u2", "<u2", "<f4", "|b1", "<U1", "<i8"]))
        arrays[key] = arrays[key].astype(new)
    elif mutation == "shape":  # one array gets another shape
        key = data.draw(st.sampled_from(["test_images", "test_labels"]))
        arrays[key] = arrays[key].reshape(-1) if arrays[key].ndim > 1 else arrays[key][:-1]
    elif mutation == "key":  # one key renamed or dropped
        key = data.draw(st.sampled_from(["test_images", "test_labels"]))
        value = arrays.pop(key)
        if data.draw(st.booleans()):
            arrays[key.replace("test", "tset")] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.npz"
        (np.savez_compressed if compressed else np.savez)(path, **arrays)
        raw = bytearray(path.read_bytes())
        if mutation == "flip_byte":
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        elif mutation == "truncate":
            raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
        elif mutation == "huge_header" and not compressed:  # declares (10^6 * N, ...) images
            head = b"'shape': (" + str(len(images)).encode() + b","
            at = raw.find(head)
            if at >= 0:
                raw[at : at + len(head)] = head.replace(b"(", b"(1000000")
        path.write_bytes(bytes(raw))
        ds = load_or_refuse(path)
    # (N, 1) labels flattened to (N,) are still valid labels
    must_load = mutation == "none" or (
        key == "test_labels" and mutation == "shape" and labels.ndim == 2
    )
    if must_load:
        assert ds is not None, mutation
    if ds is not None and (mutation == "none" or must_load):
        np.testing.assert_array_equal(ds.labels, labels.reshape(-1).astype(np.int64))
        assert ds.images.reshape(len(ds), -1).tolist() == images.reshape(len(ds), -1).tolist()
    seen["loaded" if ds is not None else "refused"] += 1


def test_npz_loading_is_total() -> None:
    run_counted(_npz_case)


def encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose header (IHDR, CRC fixed) declares width x height pixels."""
    raw = bytearray(encode(np.zeros((1, 1), np.uint8), "PNG"))
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


@st.composite
def image_folders(draw: st.DrawFn) -> tuple[str, int, int, dict[str, list[tuple[str, bytes]]]]:
    """A valid image folder: class subfolders holding real PNG or JPEG encodings, all of one
    size and mode (8-bit gray, RGB, RGBA or palette)."""
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P"]))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    tree: dict[str, list[tuple[str, bytes]]] = {}
    for cls in draw(st.lists(st.sampled_from(LABELS), min_size=1, max_size=2, unique=True)):
        items = []
        for _ in range(draw(st.integers(1, 3))):
            fmt = draw(st.sampled_from(["PNG", "JPEG"])) if mode in ("L", "RGB") else "PNG"
            shape = (h, w) if mode in ("L", "P") else (h, w, len(mode))
            arr = draw(hnp.arrays(np.uint8, shape))
            img = Image.fromarray(arr if mode != "P" else arr, "L" if mode == "P" else mode)
            img = img.convert("P") if mode == "P" else img
            buf = io.BytesIO()
            img.save(buf, format=fmt)
            suffix = {"PNG": [".png", ".PNG"], "JPEG": [".jpg", ".jpeg", ".JPG"]}[fmt]
            items.append((draw(st.sampled_from(suffix)), buf.getvalue()))
        tree[cls] = items
    event(f"mode {mode}")
    return mode, h, w, tree


FOLDER_MUTATIONS = [
    "none", "flip_byte", "truncate", "other_size", "sixteen_bit", "huge_declared",
    "unknown_class", "symlink_file", "dangling_symlink", "symlink_class", "text_file", "hidden",
]  # fmt: skip


@bounded(100)
@given(image_folders(), st.sampled_from(FOLDER_MUTATIONS), st.data())
def _folder_case(seen: Counter[str], folder: Any, mutation: str, data: Any) -> None:
    event(f"mutation: {mutation}")
    mode, h, w, tree = folder
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        files = []
        for cls, items in tree.items():
            (root / cls).mkdir(parents=True)
            for i, (suffix, blob) in enumerate(items):
                (root / cls / f"{i}{suffix}").write_bytes(blob)
                files.append(root / cls / f"{i}{suffix}")
        target = data.draw(st.sampled_from(files))
        cls_dir = target.parent
        if mutation == "flip_byte":
            raw = bytearray(target.read_bytes())
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
            target.write_bytes(bytes(raw))
        elif mutation == "truncate":
            target.write_bytes(target.read_bytes()[: data.draw(st.integers(0, 40))])
        elif mutation == "other_size":
            (cls_dir / "odd.png").write_bytes(encode(np.zeros((h + 1, w), np.uint8), "PNG"))
        elif mutation == "sixteen_bit":  # a real 16-bit grayscale PNG (mode I;16)
            arr = data.draw(hnp.arrays(np.uint16, (h, w), elements=st.integers(256, 65535)))
            (cls_dir / "deep.png").write_bytes(encode(arr, "PNG"))
        elif mutation == "huge_declared":
            side = data.draw(st.sampled_from([2**14, 50_000, 2**31 - 1]))
            (cls_dir / "bomb.png").write_bytes(png_declaring(side, side))
        elif mutation == "unknown_class":
            (root / "covid").mkdir()
            shutil.copy(target, root / "covid" / target.name)
        elif mutation == "symlink_file":  # a link to a valid image of the same size
            (cls_dir / f"link{target.suffix}").symlink_to(target)
        elif mutation == "dangling_symlink":
            (cls_dir / "gone.png").symlink_to(Path(tmp) / "nowhere.png")
        elif mutation == "symlink_class":
            missing = next((c for c in LABELS if c not in tree), None)
            if missing:
                (root / missing).symlink_to(cls_dir, target_is_directory=True)
        elif mutation == "text_file":
            (cls_dir / "notes.txt").write_text("not an image")
        elif mutation == "hidden":
            (root / ".thumbnails").mkdir()
        ds = load_or_refuse(root)
    if mutation in ("none", "symlink_file", "symlink_class", "text_file", "hidden"):
        assert ds is not None, mutation  # still a valid folder
    if mutation in ("other_size", "unknown_class", "huge_declared", "sixteen_bit"):
        # 16-bit: refused rather than silently clipped to 255 by an 8-bit conversion
        assert ds is None, mutation
    if ds is not None:
        assert ds.images.shape[1:3] == (h, w)
        assert ds.images.ndim == (3 if mode == "L" else 4)
    seen["loaded" if ds is not None else "refused"] += 1


def test_image_folder_loading_is_total() -> None:
    run_counted(_folder_case)


@pytest.mark.parametrize("bad", ["test_images.npy", "test_labels.npy"])
def test_zip_with_bad_member_is_a_user_error(bad: str, tmp_path: Path) -> None:
    """A zip whose member is not a .npy at all (a renamed archive from elsewhere)."""
    path = tmp_path / "data.npz"
    good = {"test_images.npy": np.zeros((2, 4, 4), np.uint8), "test_labels.npy": np.zeros(2)}
    with zipfile.ZipFile(path, "w") as z:
        for name, arr in good.items():
            buf = io.BytesIO()
            np.save(buf, arr.astype(np.uint8))
            z.writestr(name, b"\x93NUMPY garbage" if name == bad else buf.getvalue())
    with pytest.raises(UserError):
        load_dataset(path, "test", LABELS)


def test_sixteen_bit_image_is_kept_not_clipped(tmp_path: Path) -> None:
    """Pillow's 8-bit conversion clips 16-bit pixels at 255; the loader keeps every 16-bit value
    (preprocess.py then maps 0..65535 onto 0..255, tests/test_dicom.py)."""
    from packager.shipped.preprocess import load_image

    (tmp_path / "normal").mkdir()
    deep = np.array([[0, 1000], [30000, 65535]], np.uint16)
    (tmp_path / "normal" / "xray.png").write_bytes(encode(deep, "PNG"))
    np.testing.assert_array_equal(load_image(tmp_path / "normal" / "xray.png"), deep)
