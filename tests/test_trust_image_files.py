"""Image files as the bundle reads them (issue 28, preprocessing in the trust core): every Pillow
mode load_image accepts comes back as the pixels Pillow wrote, the ones it refuses say why in
one line, the pixel limit holds at its edge, and `formats` refuses what the self-test did not
cover. Files are written by Pillow (and pydicom) in each test, in-process."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from packager.shipped.preprocess import ImageError, Preprocess, check_pixels, is_dicom, load_image
from tests.dicom_files import write_dicom

RNG = np.random.default_rng(11)
GREY = RNG.integers(0, 256, (5, 6), dtype=np.uint8)
RGB = RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8)
LIMIT_TAIL = (
    "pixel limit (a decompression bomb or a mis-written header); downsample it before export"
)


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _load(data: bytes, name: str = "x.img", **kw: object) -> np.ndarray:
    return load_image(name, data=data, **kw)  # type: ignore[arg-type]


def test_grey_and_colour_modes_read_as_pillow_wrote_them() -> None:
    bilevel = GREY > 127
    cases = {
        "L": (Image.fromarray(GREY), GREY),
        "1": (Image.fromarray(bilevel), bilevel.astype(np.uint8) * 255),
        "LA": (Image.fromarray(np.dstack([GREY, GREY[::-1]]), "LA"), GREY),
        "RGB": (Image.fromarray(RGB), RGB),
        "RGBA": (Image.fromarray(np.dstack([RGB, GREY])), RGB),
        "P": (Image.fromarray(RGB).quantize(16), None),
    }
    for mode, (img, want) in cases.items():
        assert img.mode == mode
        got = _load(_save(img, "PNG"))
        want = np.asarray(img.convert("RGB")) if want is None else want
        assert got.dtype == np.uint8 and got.shape == want.shape, mode
        np.testing.assert_array_equal(got, want, err_msg=mode)


def test_32bit_integer_images_keep_a_16bit_range_or_are_refused() -> None:
    edge = np.array([[0, 1, 65535], [300, 40000, 2]], np.int32)
    img = Image.fromarray(edge)
    assert img.mode == "I"
    got = _load(_save(img, "TIFF"))
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, edge)
    for bad in (-1, 65536):
        with pytest.raises(ImageError) as err:
            _load(_save(Image.fromarray(np.where(edge == 2, bad, edge).astype(np.int32)), "TIFF"))
        assert str(err.value) == "32-bit integer image outside 0..65535; export 8- or 16-bit"


def test_a_floating_point_image_is_refused() -> None:
    img = Image.fromarray(GREY.astype(np.float32))
    assert img.mode == "F"
    with pytest.raises(ImageError) as err:
        _load(_save(img, "TIFF"))
    assert str(err.value) == "floating-point image has no defined range; export 8- or 16-bit"


def test_formats_refuse_what_the_self_test_did_not_cover(tmp_path: Path) -> None:
    png, jpeg = _save(Image.fromarray(GREY), "PNG"), _save(Image.fromarray(RGB), "JPEG")
    mpo = _save(Image.fromarray(RGB), "MPO", save_all=True, append_images=[Image.fromarray(RGB)])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    assert _load(png, formats=("png",)).shape == (5, 6)
    assert _load(jpeg, formats=("jpeg",)).shape == (5, 6, 3)
    assert _load(mpo, formats=("jpeg",)).shape == (5, 6, 3)  # a camera JPEG is a JPEG
    with pytest.raises(ImageError) as err:
        _load(png, formats=("jpeg", "dicom"))
    assert str(err.value) == (
        "this bundle does not read PNG files: it reads jpeg, dicom (what its self-test covers); "
        'convert the image, or rebuild with [preprocess] formats listing "png"'
    )
    with pytest.raises(ImageError, match=r"^this bundle does not read JPEG files: it reads png "):
        _load(mpo, formats=("png",))
    dcm = write_dicom(tmp_path / "x.dcm", GREY)
    with pytest.raises(ImageError, match=r"^this bundle does not read DICOM files: it reads png "):
        load_image(dcm, formats=("png",))


def test_preprocess_load_passes_its_window_bytes_and_formats(tmp_path: Path) -> None:
    v = (np.arange(30, dtype=np.uint16).reshape(5, 6) * 100).astype(np.uint16)
    dcm = write_dicom(tmp_path / "x.dcm", v, bits_stored=12, window=(0.0, 10.0))
    pre = Preprocess(6, 1, "NCHW", 1.0, (0.0,), (1.0,), "float32", dicom_window=(1500.0, 3001.0))
    # PS3.3 C.11.2.1.2.1, LINEAR, with the configured window instead of the file's
    want = 255 * np.clip((v - 1499.5) / 3000 + 0.5, 0, 1)
    np.testing.assert_allclose(pre.load(dcm), want, atol=1e-4)
    np.testing.assert_allclose(pre.load(tmp_path / "absent.dcm", dcm.read_bytes()), want, atol=1e-4)
    only_png = Preprocess(6, 1, "NCHW", 1.0, (0.0,), (1.0,), "float32", formats=("png",))
    with pytest.raises(ImageError, match="does not read DICOM files"):
        only_png.load(dcm)


def test_is_dicom_by_suffix_or_by_the_magic_after_the_preamble() -> None:
    magic = bytes(128) + b"DICM"
    assert is_dicom("x.DCM", b"") and is_dicom("x.dicom", b"") and is_dicom("x.Dic", b"")
    assert is_dicom("x", magic) and is_dicom("x.png", magic + b"rest of the file")
    assert not is_dicom("x.png", bytes(132)) and not is_dicom("x", b"DICM" + bytes(128))
    assert not is_dicom("x.png", bytes(129) + b"DICM")


def test_the_pixel_limit_holds_at_its_edge(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64)
    assert _load(_save(Image.fromarray(np.zeros((8, 8), np.uint8)), "PNG")).shape == (8, 8)
    with pytest.raises(ImageError) as err:
        _load(_save(Image.fromarray(np.zeros((8, 9), np.uint8)), "PNG"))
    assert str(err.value) == f"the image declares 8x9 pixels, more than the 64 {LIMIT_TAIL}"
    # past twice the limit Pillow refuses on open; the message is still one line of ours
    with pytest.raises(ImageError) as err:
        _load(_save(Image.fromarray(np.zeros((12, 12), np.uint8)), "PNG"))
    assert str(err.value) == f"the image declares too many pixels, more than the 64 {LIMIT_TAIL}"
    write_dicom(tmp_path / "big.dcm", np.zeros((8, 9), np.uint8))
    with pytest.raises(ImageError) as err:
        load_image(tmp_path / "big.dcm")
    assert str(err.value) == f"DICOM declares 8x9 pixels, more than the 64 {LIMIT_TAIL}"


def test_without_pillows_limit_the_limit_is_two_to_the_31(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    check_pixels("DICOM", 2**16, 2**15)  # exactly 2**31: allowed
    with pytest.raises(ImageError) as err:
        check_pixels("DICOM", 2**16, 2**15 + 1)
    assert (
        str(err.value)
        == f"DICOM declares 32769x65536 pixels, more than the 2,147,483,648 {LIMIT_TAIL}"
    )
