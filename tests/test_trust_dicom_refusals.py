"""DICOM files the bundle refuses (issue 28, preprocessing in the trust core), each made with
pydicom in the test and read in-process: one ImageError line naming the problem and the fix,
never an element's value (the files carry tests/dicom_files.py's fake patient identifiers). Where
the refusal quotes pydicom, the expected text comes from pydicom itself."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless

import packager.shipped.preprocess as preprocess
from packager.shipped.preprocess import ImageError, load_image
from tests.dicom_files import PATIENT_ID, PATIENT_NAME, STUDY_DATE, write_dicom

V = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 100).astype(np.uint16)
PHOTOMETRICS = "MONOCHROME1, MONOCHROME2, RGB, YBR_FULL, YBR_FULL_422, YBR_ICT, YBR_RCT"


def refusal(path: Path, window: tuple[float, float] | None = None) -> str:
    with pytest.raises(ImageError) as err:
        load_image(path, window)
    text = str(err.value)
    assert "\n" not in text and not any(s in text for s in (PATIENT_NAME, PATIENT_ID, STUDY_DATE))
    return text


def edited(path: Path, change: Callable[[Dataset], object]) -> Path:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=False)
    return path


def patched(path: Path, find: bytes, at: int, new: bytes) -> Path:
    raw = path.read_bytes()
    i = raw.index(find) + at
    path.write_bytes(raw[:i] + new + raw[i + len(new) :])
    return path


def _delete(name: str) -> Callable[[Dataset], None]:
    return lambda ds: delattr(ds, name)


def _set(name: str, value: object) -> Callable[[Dataset], None]:
    return lambda ds: setattr(ds, name, value)


def _text(path: Path) -> Path:
    path.write_text("not an image\n")
    return path


CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "non-image SOP class": (
        lambda d: write_dicom(d / "x.dcm", V, sop_class="1.2.840.10008.5.1.4.1.1.481.2"),
        "SOP class RT Dose Storage is not an image; remove it from the data",
    ),
    "no pixel data": (
        lambda d: edited(write_dicom(d / "x.dcm", V), _delete("PixelData")),
        "DICOM file has no pixel data; remove it from the data",
    ),
    "two frames": (
        lambda d: write_dicom(d / "x.dcm", np.stack([V, V]), frames=2),
        "multi-frame DICOM (2 frames); export one frame per file (a single view)",
    ),
    "frames not a number": (
        lambda d: patched(
            edited(write_dicom(d / "x.dcm", V), _set("NumberOfFrames", 1)),
            b"\x28\x00\x08\x00IS\x02\x00",  # (0028,0008) IS, 2 bytes: "1 " made "x "
            8,
            b"x ",
        ),
        "DICOM Number of Frames is not a number; re-export it",
    ),
    "palette colour": (
        lambda d: write_dicom(d / "x.dcm", V.astype(np.uint8), photometric="PALETTE COLOR"),
        f"photometric interpretation PALETTE COLOR is not supported; use one of {PHOTOMETRICS}",
    ),
    "no photometric": (
        lambda d: edited(write_dicom(d / "x.dcm", V), _delete("PhotometricInterpretation")),
        f"photometric interpretation missing is not supported; use one of {PHOTOMETRICS}",
    ),
    "zero rows": (
        lambda d: edited(write_dicom(d / "x.dcm", V), _set("Rows", 0)),
        "DICOM Rows/Columns missing or zero; re-export it",
    ),
    "two row counts": (
        lambda d: edited(write_dicom(d / "x.dcm", V), _set("Rows", [4, 4])),
        "DICOM Rows/Columns missing or zero; re-export it",
    ),
    "no bits stored": (
        lambda d: edited(write_dicom(d / "x.dcm", V), _delete("BitsStored")),
        "DICOM Bits Stored None is not 1..16; re-export it",
    ),
    "17 bits stored": (
        lambda d: write_dicom(d / "x.dcm", V.astype(np.uint32), bits_stored=17),
        "DICOM Bits Stored 17 is not 1..16; re-export it",
    ),
    "monochrome with three samples": (
        lambda d: write_dicom(d / "x.dcm", np.zeros((4, 4, 3), np.uint8)),
        "monochrome DICOM pixel array has shape (4, 4, 3); expected (rows, cols)",
    ),
    "16-bit colour": (
        lambda d: write_dicom(d / "x.dcm", np.zeros((4, 4, 3), np.uint16), photometric="RGB"),
        "RGB DICOM with 16 bits; only 8-bit colour",
    ),
    "no transfer syntax": (
        lambda d: edited(
            write_dicom(d / "x.dcm", V), lambda ds: delattr(ds.file_meta, "TransferSyntaxUID")
        ),
        "DICOM file without a transfer syntax; re-export it as Part 10",
    ),
    "unknown transfer syntax": (
        lambda d: patched(write_dicom(d / "x.dcm", V), b"1.2.840.10008.1.2.1\x00", 18, b"9"),
        "no pixel decoder exists for transfer syntax 1.2.840.10008.1.2.9; re-export uncompressed",
    ),
    "rescale slope 0": (
        lambda d: write_dicom(d / "x.dcm", V, rescale=(0.0, 5.0)),
        "the DICOM LUT or window gives an empty output range; check the window",
    ),
    "rescale overflowing up": (
        lambda d: write_dicom(d / "x.dcm", V, rescale=(1e308, 0.0)),
        "the DICOM LUT or window gives an empty output range; check the window",
    ),
    "rescale overflowing down": (
        lambda d: write_dicom(d / "x.dcm", V, rescale=(-1e308, 0.0)),
        "the DICOM LUT or window gives an empty output range; check the window",
    ),
    "not DICOM at all": (
        lambda d: _text(d / "x.dcm"),
        "not a DICOM file (no DICM preamble); remove it or export DICOM Part 10",
    ),
    "unparseable meta": (  # the transfer syntax's VR made "ZZ": dcmread itself fails
        lambda d: patched(write_dicom(d / "x.dcm", V), b"\x02\x00\x10\x00UI", 4, b"ZZ"),
        "damaged DICOM file (NotImplementedError: cannot parse its elements); re-export it",
    ),
    "damaged element read lazily": (  # Rows' VR made "ZZ": found when Rows is read
        lambda d: patched(write_dicom(d / "x.dcm", V), b"\x28\x00\x10\x00US", 4, b"ZZ"),
        "damaged DICOM file (NotImplementedError reading its elements); re-export it",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_in_one_line(case: str, tmp_path: Path) -> None:
    make, message = CASES[case]
    assert refusal(make(tmp_path)) == message


def test_an_empty_sop_class_is_refused_as_damaged(tmp_path: Path) -> None:
    f = edited(write_dicom(tmp_path / "x.dcm", V), _set("SOPClassUID", ""))
    assert refusal(f).startswith("damaged DICOM file (")


def test_a_window_pydicom_cannot_apply_is_refused(tmp_path: Path) -> None:
    f = write_dicom(tmp_path / "x.dcm", V)
    assert refusal(f, (100.0, 0.0)) == "cannot apply the DICOM LUTs (ValueError); check the window"


def _decode_error(path: Path) -> tuple[str, str]:
    with pytest.raises(Exception) as err:
        _ = pydicom.dcmread(path).pixel_array
    return type(err.value).__name__, " ".join(str(err.value).split())


def test_pixel_data_pydicom_cannot_decode_is_quoted_in_one_line(tmp_path: Path) -> None:
    f = edited(
        write_dicom(tmp_path / "t.dcm", V), lambda ds: setattr(ds, "PixelData", ds.PixelData[:-4])
    )
    name, text = _decode_error(f)
    assert name == "ValueError" and len(text.split()) > 5
    assert refusal(f) == f"cannot decode the pixel data ({name}: {text})"


def test_a_long_decoder_message_is_cut_at_200_characters(tmp_path: Path) -> None:
    """A JPEG-LS frame that is only a start-of-image and a frame marker followed by fill bytes."""

    def jpeg_ls(ds: Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"\xff" * 60])

    from pydicom.pixels import get_decoder

    if not get_decoder(JPEGLSLossless).is_available:
        pytest.skip("not validated: no JPEG-LS decoder here (pip install pylibjpeg-libjpeg)")
    f = edited(write_dicom(tmp_path / "j.dcm", V), jpeg_ls)
    name, text = _decode_error(f)
    if len(text) <= 200:
        pytest.skip(f"not validated: this host's JPEG-LS decoder says only {len(text)} characters")
    assert refusal(f) == f"cannot decode the pixel data ({name}: {text[:200]})"


def test_without_pydicom_the_message_names_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    f = write_dicom(tmp_path / "x.dcm", V)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # what `import pydicom` sees when absent
    assert refusal(f) == "reading DICOM needs pydicom 3; pip install pydicom"


def test_pydicom_and_decoder_warnings_are_silenced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """pydicom may quote an element's value in a warning; once a DICOM is read, no warning from
    pydicom or its decoders reaches the user, and every other warning still does."""
    monkeypatch.setattr(preprocess, "_QUIET", [])  # pytest restores the filters after each test
    f = write_dicom(tmp_path / "x.dcm", V)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(f)
        for module in ("pydicom", "pydicom.valuerep", "pylibjpeg.utils", "openjpeg", "libjpeg"):
            warnings.warn_explicit(
                f"bad value {PATIENT_NAME}", UserWarning, "x.py", 1, module=module
            )
        for module in ("packager.cli", "pydicomx", "numpy"):
            with pytest.raises(UserWarning):
                warnings.warn_explicit("kept", UserWarning, "x.py", 1, module=module)
