"""Property-based tests (hypothesis, bounded): config parsing and data loading return a valid
object or raise UserError, whatever they are given; what they return holds its invariants."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from packager.config import SECTIONS, Config, load_config, parse_config
from packager.data import load_dataset
from packager.errors import UserError
from packager.preprocess import Preprocess

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


@bounded(150)
@given(config_dicts())
def test_parse_config_is_total(data: dict[str, Any]) -> None:
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


@bounded(150)
@given(config_dicts() | st.text(max_size=200).map(lambda t: {"__raw__": t}))
def test_config_file_is_total(data: dict[str, Any]) -> None:
    """The same through a real packager.toml, plus arbitrary text."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "packager.toml"
        path.write_text(data["__raw__"] if "__raw__" in data else to_toml(data), encoding="utf-8")
        try:
            cfg = load_config(path)
        except UserError as exc:
            assert "\n" not in str(exc).strip() or "TOML" in str(exc)
            return
        check_invariants(cfg)


# ---------------------------------------------------------------------------------------------
# Data loading

LABELS = ["normal", "pneumonia"]
PRE = Preprocess(
    size=6, channels=3, layout="NCHW", scale=1 / 255, mean=(0.5,), std=(0.5,), dtype="float32"
)

arrays = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.int64, np.int8, np.float32, np.bool_, np.dtype("<U2")]),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
)
uint8_images = hnp.arrays(
    np.uint8, st.tuples(st.integers(0, 6), st.integers(0, 5), st.integers(0, 5))
)
labels_like = hnp.arrays(
    st.sampled_from([np.int64, np.int32]),
    st.tuples(st.integers(0, 6)) | st.tuples(st.integers(0, 6), st.integers(1, 2)),
    elements=st.integers(-2, 3),
)


def load_or_refuse(path: Path) -> None:
    """Either a well-formed dataset or one UserError line, never anything else."""
    try:
        ds = load_dataset(path, "test", LABELS)
    except UserError as exc:
        assert "\n" not in str(exc).strip()
        return
    check_dataset(ds)


def check_dataset(ds: Any) -> None:
    assert ds.images.dtype == np.uint8 and ds.images.ndim in (3, 4)
    assert len(ds.images) == len(ds.labels) > 0 and ds.labels.dtype == np.int64
    assert ds.labels.min() >= 0 and ds.labels.max() < len(LABELS)
    assert min(ds.images.shape[1:3]) >= 1
    x = PRE(ds.images)  # what every target is fed: must work on anything the loader accepts
    assert x.shape == (len(ds), 3, 6, 6) and np.isfinite(x).all()


@bounded(120)
@given(
    st.dictionaries(
        st.sampled_from(["test_images", "test_labels", "train_images", "x"]),
        arrays | uint8_images | labels_like,
        max_size=4,
    ),
    st.booleans(),
    st.integers(min_value=-1, max_value=10**6),
)
def test_npz_loading_is_total(found: dict[str, np.ndarray], compressed: bool, flip: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.npz"
        (np.savez_compressed if compressed else np.savez)(path, **found)
        if flip >= 0:  # one damaged byte somewhere in the file
            raw = bytearray(path.read_bytes())
            raw[flip % len(raw)] ^= 0xFF
            path.write_bytes(bytes(raw))
        load_or_refuse(path)


def png_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


files = st.one_of(
    hnp.arrays(np.uint8, st.tuples(st.integers(1, 5), st.integers(1, 5))).map(png_bytes),
    hnp.arrays(
        np.uint8, st.tuples(st.integers(1, 5), st.integers(1, 5), st.sampled_from([3, 4]))
    ).map(png_bytes),
    st.binary(max_size=64),
    st.just(png_bytes(np.zeros((4, 4), np.uint8))[:30]),
)


@bounded(60)
@given(
    st.dictionaries(
        st.sampled_from([*LABELS, "other", ".hidden"]),
        st.lists(st.tuples(st.sampled_from([".png", ".jpg", ".txt", ".PNG"]), files), max_size=3),
        max_size=3,
    )
)
def test_image_folder_loading_is_total(tree: dict[str, list[tuple[str, bytes]]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        root.mkdir()
        for cls, items in tree.items():
            (root / cls).mkdir()
            for i, (suffix, data) in enumerate(items):
                (root / cls / f"{i}{suffix}").write_bytes(data)
        load_or_refuse(root)


@pytest.mark.parametrize("bad", ["test_images.npy", "test_labels.npy"])
def test_zip_with_bad_member_is_a_user_error(bad: str, tmp_path: Path) -> None:
    """A zip whose member is not a .npy at all (a renamed archive from elsewhere)."""
    import io

    path = tmp_path / "data.npz"
    good = {"test_images.npy": np.zeros((2, 4, 4), np.uint8), "test_labels.npy": np.zeros(2)}
    with zipfile.ZipFile(path, "w") as z:
        for name, arr in good.items():
            buf = io.BytesIO()
            np.save(buf, arr.astype(np.uint8))
            z.writestr(name, b"\x93NUMPY garbage" if name == bad else buf.getvalue())
    with pytest.raises(UserError):
        load_dataset(path, "test", LABELS)
