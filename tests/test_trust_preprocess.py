"""The model tensor (issue 28, preprocessing in the trust core): Preprocess against a plain numpy
recount of the module docstring's steps (display scale, ITU-R 601 grey, half-pixel bilinear or
nearest resize, per-channel normalisation, layout), Pillow's own decoding and grey conversion,
and the JSON that bundles ship. Hand-made arrays only, in-process: each test takes milliseconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from packager.shipped.preprocess import ImageError, Preprocess

MEAN, STD = (0.1, 0.2, 0.3), (0.5, 0.25, 0.2)


def _axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # pixel centres at i + 0.5, edges clamped: the textbook bilinear upsampling
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    return lo, np.minimum(lo + 1, n_in - 1), pos - lo


def bilinear(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(H, W, C) float -> (height, width, C), upsampling only (Pillow's filter widens
    downward)."""
    r0, r1, tr = _axis(img.shape[0], hw[0])
    c0, c1, tc = _axis(img.shape[1], hw[1])
    rows = img[r0] * (1 - tr)[:, None, None] + img[r1] * tr[:, None, None]
    return rows[:, c0] * (1 - tc)[None, :, None] + rows[:, c1] * tc[None, :, None]


def nearest(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    r = ((np.arange(hw[0]) + 0.5) * img.shape[0] / hw[0]).astype(int)
    c = ((np.arange(hw[1]) + 0.5) * img.shape[1] / hw[1]).astype(int)
    return img[np.ix_(r, c)]


def reference(img: np.ndarray, pre: Preprocess) -> np.ndarray:
    """One image -> (height, width, channels) float64 on the display scale, by the docstring."""
    x = img[..., None] if img.ndim == 2 else img
    top = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 2.0**pre.uint16_bits - 1}
    x = x[..., :3].astype(np.float64) * (255.0 / top.get(x.dtype, 255.0))
    if x.shape[-1] == 3 and pre.channels == 1:
        x = 0.299 * x[..., :1] + 0.587 * x[..., 1:2] + 0.114 * x[..., 2:3]
    hw = (pre.size, pre.size) if isinstance(pre.size, int) else pre.size
    if x.shape[:2] != hw:
        x = (bilinear if pre.resize == "bilinear" else nearest)(x, hw)
    return np.repeat(x, pre.channels // x.shape[-1], axis=-1)


def _images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "grey-uint8-2d": rng.integers(0, 256, (3, 3), dtype=np.uint8),
        "rgb-uint8": rng.integers(0, 256, (4, 4, 3), dtype=np.uint8),
        "rgba-uint8": rng.integers(0, 256, (3, 3, 4), dtype=np.uint8),
        "grey-uint16": rng.integers(0, 4096, (4, 4, 1), dtype=np.uint16),
        "grey-float32": (rng.random((8, 8)) * 255).astype(np.float32),
    }


SIZES = [8, (16, 24)]  # square, and [height, width] (multiples of 8: no nearest-pixel ties)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("resize", ["bilinear", "nearest"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", list(_images()))
def test_prepare_equals_a_numpy_recount(
    name: str, channels: int, resize: str, size: int | tuple[int, int]
) -> None:
    pre = Preprocess(size, channels, "NHWC", 1.0, (0.0,), (1.0,), "float32", resize, uint16_bits=12)
    img = _images()[name]
    got = pre.prepare(img)
    hw = (size, size) if isinstance(size, int) else size
    assert got.dtype == np.float32 and got.shape == (*hw, channels)
    np.testing.assert_allclose(got, reference(img, pre), atol=1e-3)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", list(_images()))
def test_tensor_equals_a_numpy_recount(
    name: str, channels: int, layout: str, dtype: str, size: int | tuple[int, int]
) -> None:
    img = _images()[name]
    pre = Preprocess(
        size, channels, layout, 1 / 255, MEAN[:channels], STD[:channels], dtype, uint16_bits=12
    )
    batch = np.stack([img, img[::-1].copy()])
    x = pre(batch)
    ref = np.stack([reference(i, pre) for i in batch]) / 255
    ref = (ref - np.array(MEAN[:channels])) / np.array(STD[:channels])
    if layout == "NCHW":
        ref = ref.transpose(0, 3, 1, 2)
    assert x.dtype == np.dtype(dtype) and x.flags.c_contiguous
    assert x.shape == ref.shape == pre.input_shape(2)
    np.testing.assert_allclose(x, ref, atol=1e-4 if dtype == "float32" else 2e-2)


def test_grey_weights_are_pillows_luma() -> None:
    """RGB to one channel: Pillow's "L" conversion (ITU-R 601-2, rounded to integers)."""
    rgb = np.random.default_rng(3).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    rgb[0, :3] = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    pillow = np.asarray(Image.fromarray(rgb).convert("L"), np.float64)
    for layout in ("NCHW", "NHWC"):
        pre = Preprocess(6, 1, layout, 1.0, (0.0,), (1.0,), "float32")
        np.testing.assert_allclose(pre(rgb[None]).reshape(6, 6), pillow, atol=0.5 + 1e-3)
        np.testing.assert_allclose(pre.prepare(rgb)[..., 0], pillow, atol=0.5 + 1e-3)


@pytest.mark.parametrize("shape", [(4, 4), (1, 4, 4, 2), (1, 4, 4, 5), (1, 1, 4, 4, 1)])
def test_a_batch_of_the_wrong_shape_is_one_line(shape: tuple[int, ...]) -> None:
    pre = Preprocess(4, 1, "NCHW", 1.0, (0.0,), (1.0,), "float32")
    with pytest.raises(ValueError) as err:
        pre(np.zeros(shape, np.uint8))
    assert str(err.value) == f"images must be (N, H, W[, 1|3|4]), got {shape}"


def test_display_scale_per_dtype() -> None:
    pre = Preprocess(2, 1, "NHWC", 1.0, (0.0,), (1.0,), "float32", uint16_bits=12)
    for img, want in (
        (np.array([[0, 255]], np.uint8), [[0.0, 255.0]]),
        (np.array([[0, 4095]], np.uint16), [[0.0, 255.0]]),
        (np.array([[0.5, 300.0]], np.float64), [[0.5, 300.0]]),  # DICOM display values as is
    ):
        got = pre.display(img)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert pre.display(np.zeros((1, 0, 0, 1), np.uint16)).size == 0  # no peak to check
    with pytest.raises(ImageError) as err:
        pre.display(np.array([[4096]], np.uint16))
    assert str(err.value) == (
        "a 16-bit image holds 4096, above the 12-bit range 0..4095; "
        "set [preprocess] uint16_bits to the data's real bit depth"
    )
    with pytest.raises(ImageError) as err:
        pre.display(np.array([[1]], np.int32))
    assert str(err.value) == "images of dtype int32 have no defined range"


def test_json_round_trips_every_field(tmp_path: Path) -> None:
    pre = Preprocess(
        32, 3, "NHWC", 1 / 255, MEAN, STD, "float16", "nearest", 12, (40.0, 400.0), ("png", "dicom")
    )
    text = pre.to_json()
    (tmp_path / "p.json").write_text(text)
    back = Preprocess.from_json(tmp_path / "p.json")
    assert back == pre and isinstance(back.dicom_window, tuple) and isinstance(back.formats, tuple)
    # the canonical form bundles ship and docs show: sorted keys, two-space indent, a newline
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert list(json.loads(text)) == sorted(json.loads(text)) and '\n  "channels": 3' in text
    plain = Preprocess(32, 1, "NCHW", 1.0, (0.5,), (0.5,), "float32")
    (tmp_path / "q.json").write_text(plain.to_json())
    assert Preprocess.from_json(tmp_path / "q.json") == plain  # dicom_window None stays None


def test_a_height_width_size_round_trips_as_a_pair(tmp_path: Path) -> None:
    pre = Preprocess((24, 40), 1, "NCHW", 1.0, (0.5,), (0.5,), "float32")
    (tmp_path / "p.json").write_text(pre.to_json())
    assert json.loads(pre.to_json())["size"] == [24, 40]  # [height, width], as in the config
    back = Preprocess.from_json(tmp_path / "p.json")
    assert back == pre and back.size == (24, 40) and back.hw == (24, 40)
    assert back.input_shape(2) == (2, 1, 24, 40)
    nhwc = Preprocess((24, 40), 3, "NHWC", 1.0, (0.5,), (0.5,), "float32")
    assert nhwc.input_shape(1) == (1, 24, 40, 3) and Preprocess(
        7, 1, "NCHW", 1, (0,), (1,), "float32"
    ).hw == (7, 7)
