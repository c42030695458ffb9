"""DICOM LUTs at pixel level (issue 28, preprocessing in the trust core): files written with
pydicom, read by load_image, compared with the DICOM standard computed in plain numpy (PS3.3
C.11.2.1.2 for windows, C.11.2.1.1 / C.11.1 for LUT sequences) and with pydicom's own
apply_voi_lut. The display range is the LUT's or window's whole output range (module docstring),
so a window wider than the data, a LUT whose extremes lie inside it, a LUT starting at a negative
value, signed pixels and 1-bit pixels each pin one part of how that range is found."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_voi_lut
from pydicom.sequence import Sequence

from packager.shipped.preprocess import Preprocess, load_image
from tests.dicom_files import write_dicom

V12 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 50).astype(np.uint16)  # 0..3150
LUT = ((np.arange(256) * 7) % 1000 + 20).astype(np.uint16)  # min 20 at [0], max 1014 at [142]


def linear(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR, as a fraction of the output range."""
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def edit(path: Path, change: Callable[[Dataset], None]) -> Path:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)
    return path


def put(**elements: object) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        for name, value in elements.items():
            setattr(ds, name, value)

    return change


def voi_lut(lut: np.ndarray, first: int) -> Sequence:
    item = Dataset()
    item.LUTDescriptor = [len(lut) % 65536, first, 16]  # 0 entries means 65536
    item.LUTData = np.asarray(lut, "<u2").tobytes()
    item["LUTData"].VR = "OW"
    return Sequence([item])


def through_lut(values: np.ndarray, lut: np.ndarray, first: int) -> np.ndarray:
    """C.11.2.1.1: below the first mapped value the first entry, above the last the last."""
    return lut[np.clip(values.astype(np.int64) - first, 0, len(lut) - 1)].astype(np.float64)


def on_display(y: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (y - lo) * 255.0 / (hi - lo)


def test_a_window_wider_than_the_data_keeps_its_own_output_range(tmp_path: Path) -> None:
    f = write_dicom(
        tmp_path / "w.dcm", V12, bits_stored=12, rescale=(1.0, -1024.0), window=(500.0, 10000.0)
    )
    frac = linear(V12 - 1024.0, 500.0, 10000.0)
    assert frac.min() > 0.3 and frac.max() < 0.7  # the data fills only the middle of the window
    np.testing.assert_allclose(load_image(f), 255.0 * frac, atol=1e-4)


def test_a_voi_lut_sequence_maps_onto_its_whole_output_range(tmp_path: Path) -> None:
    f = edit(
        write_dicom(tmp_path / "l.dcm", V12, bits_stored=12),
        put(VOILUTSequence=voi_lut(LUT, 10)),
    )
    want = through_lut(V12, LUT, 10)
    ds = pydicom.dcmread(f)
    np.testing.assert_array_equal(apply_voi_lut(ds.pixel_array, ds), want)  # pydicom agrees
    # the maximum lies inside the LUT (entry 142): its range is not that of its end entries
    np.testing.assert_allclose(load_image(f), on_display(want, 20.0, 1014.0), atol=1e-4)
    # with a window beside it the LUT still wins (pydicom's preference), and so does its range
    g = edit(f, put(WindowCenter=100.0, WindowWidth=50.0))
    np.testing.assert_allclose(load_image(g), on_display(want, 20.0, 1014.0), atol=1e-4)


def test_a_65536_entry_lut_is_read_whole(tmp_path: Path) -> None:
    big = ((np.arange(65536) * 13) % 60000).astype(np.uint16)  # max 59999 at entry 36923
    f = edit(
        write_dicom(tmp_path / "b.dcm", V12, bits_stored=12),
        put(VOILUTSequence=voi_lut(big, 0)),
    )
    assert pydicom.dcmread(f).VOILUTSequence[0].LUTDescriptor[0] == 0
    np.testing.assert_allclose(
        load_image(f), on_display(through_lut(V12, big, 0), 0.0, 59999.0), atol=1e-4
    )


def _signed(tmp_path: Path, values: np.ndarray, **kw: object) -> Path:
    f = write_dicom(tmp_path / "s.dcm", values.astype(np.int16).view(np.uint16), **kw)  # type: ignore[arg-type]
    return edit(f, put(PixelRepresentation=1))


def test_signed_pixels_span_the_signed_stored_range(tmp_path: Path) -> None:
    s = np.arange(-1600, 1600, 50).reshape(8, 8)
    f = _signed(tmp_path, s, bits_stored=12, rescale=(2.0, 100.0))
    assert pydicom.dcmread(f).pixel_array.min() == -1600
    # no window: the modality range of the stored range -2048..2047, slope and intercept cancel
    np.testing.assert_allclose(load_image(f), (s + 2048.0) * 255.0 / 4095.0, atol=1e-4)


def test_a_lut_starting_at_a_negative_value(tmp_path: Path) -> None:
    s = np.arange(-160, 160, 5).reshape(8, 8)
    f = _signed(tmp_path, s, bits_stored=12)
    f = edit(f, put(VOILUTSequence=voi_lut(LUT, -100)))
    assert pydicom.dcmread(f).VOILUTSequence[0].LUTDescriptor[1] == -100
    np.testing.assert_allclose(
        load_image(f), on_display(through_lut(s, LUT, -100), 20.0, 1014.0), atol=1e-4
    )


def test_one_bit_pixels_are_black_and_white(tmp_path: Path) -> None:
    from pydicom.pixels.utils import pack_bits

    bits = (np.arange(64).reshape(8, 8) % 3 == 0).astype(np.uint8)

    def one_bit(ds: Dataset) -> None:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
        ds.PixelData = pack_bits(bits)

    f = edit(write_dicom(tmp_path / "1.dcm", bits), one_bit)
    np.testing.assert_array_equal(load_image(f), bits * 255.0)


def test_the_configured_window_replaces_the_files_lut_window_and_function(tmp_path: Path) -> None:
    f = write_dicom(
        tmp_path / "o.dcm", V12, bits_stored=12, window=(100.0, 50.0), window_function="SIGMOID"
    )
    f = edit(f, put(VOILUTSequence=voi_lut(LUT, 10)))
    want = 255.0 * linear(V12.astype(np.float64), 1500.0, 2000.0)
    np.testing.assert_allclose(load_image(f, (1500.0, 2000.0)), want, atol=1e-4)
    pre = Preprocess(8, 1, "NCHW", 1.0, (0.0,), (1.0,), "float32", dicom_window=(1500.0, 2000.0))
    np.testing.assert_allclose(pre.load(f), want, atol=1e-4)
    # without the override the file's own LUT decides
    np.testing.assert_allclose(
        load_image(f), on_display(through_lut(V12, LUT, 10), 20.0, 1014.0), atol=1e-4
    )


def test_a_file_saying_zero_frames_is_read_as_one(tmp_path: Path) -> None:
    v = (np.arange(16, dtype=np.uint8).reshape(4, 4) * 16).astype(np.uint8)
    f = edit(write_dicom(tmp_path / "z.dcm", v), put(NumberOfFrames=0))
    np.testing.assert_array_equal(load_image(f), v.astype(np.float32))
