"""MONOCHROME1 at pixel level (issue 28 item 2): the same stored pixels written once as
MONOCHROME2 and once as MONOCHROME1 (real files, pydicom) must read back as exact inverses on
the 0..255 display scale, pixel by pixel, and each must equal a plain numpy computation of the
DICOM standard's rescale and linear window (PS3.3 C.11.2.1.2); the model tensor of a MONOCHROME1
file storing 255 - v must equal that of a MONOCHROME2 file storing v."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from packager.shipped.preprocess import Preprocess, load_image
from tests.dicom_files import write_dicom


def _pixels(bits: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 2**bits - 1
    arr = rng.integers(0, top + 1, (24, 20)).astype(np.uint8 if bits == 8 else np.uint16)
    arr[0, 0], arr[0, 1] = 0, top  # both ends of the stored range
    return arr


def _pair(tmp_path: Path, pixels: np.ndarray, **kw: object) -> tuple[np.ndarray, np.ndarray]:
    mono2 = load_image(write_dicom(tmp_path / "m2.dcm", pixels, **kw))  # type: ignore[arg-type]
    mono1 = load_image(
        write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1", **kw)  # type: ignore[arg-type]
    )
    assert mono1.dtype == mono2.dtype == np.float32 and mono1.shape == pixels.shape
    return mono2, mono1


def test_8bit_monochrome1_is_the_pixelwise_inverse(tmp_path: Path) -> None:
    v = _pixels(8)
    mono2, mono1 = _pair(tmp_path, v)
    # no LUT and no window: the stored range 0..255 is the display range, value for value
    np.testing.assert_array_equal(mono2, v.astype(np.float32))
    np.testing.assert_array_equal(mono1, 255.0 - v.astype(np.float32))
    np.testing.assert_array_equal(mono1 + mono2, np.full(v.shape, 255.0, np.float32))


def test_12bit_rescaled_and_windowed_monochrome1_is_the_pixelwise_inverse(
    tmp_path: Path,
) -> None:
    v = _pixels(12, seed=1)
    slope, intercept, center, width = 2.0, -1024.0, 2000.0, 3000.0
    mono2, mono1 = _pair(
        tmp_path,
        v,
        bits_stored=12,
        rescale=(slope, intercept),
        window=(center, width),
    )
    # PS3.3 C.11.2.1.2.1, LINEAR: x = slope * v + intercept; below c - 0.5 - (w-1)/2 -> y_min,
    # above c - 0.5 + (w-1)/2 -> y_max, else ((x - (c - 0.5)) / (w - 1) + 0.5) of the range.
    x = slope * v.astype(np.float64) + intercept
    frac = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    assert (frac == 0).any() and (frac == 1).any() and ((frac > 0) & (frac < 1)).any()
    np.testing.assert_allclose(mono2, 255.0 * frac, atol=2e-4)
    np.testing.assert_allclose(mono1, 255.0 * (1.0 - frac), atol=2e-4)
    np.testing.assert_allclose(mono1 + mono2, 255.0, atol=2e-4)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_monochrome1_of_inverted_pixels_gives_the_same_model_input(
    tmp_path: Path, layout: str
) -> None:
    v = _pixels(8, seed=2)
    pre = Preprocess(16, 3, layout, 1 / 255, (0.5,) * 3, (0.25,) * 3, "float32")
    as_mono2 = pre.load(write_dicom(tmp_path / "m2.dcm", v))
    as_mono1 = pre.load(
        write_dicom(tmp_path / "m1.dcm", (255 - v).astype(np.uint8), photometric="MONOCHROME1")
    )
    np.testing.assert_array_equal(as_mono1, as_mono2)
    np.testing.assert_array_equal(pre(as_mono1[None]), pre(as_mono2[None]))
    # and not trivially: the same stored pixels as MONOCHROME1 give a different tensor
    same_stored = pre.load(write_dicom(tmp_path / "s1.dcm", v, photometric="MONOCHROME1"))
    assert not np.allclose(pre(same_stored[None]), pre(as_mono2[None]))
